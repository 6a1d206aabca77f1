//go:build linux

package guestinit

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of the waits for the guest's processes to exit at shutdown.
const (
	termWait = 2 * time.Second
	killWait = time.Second
)

// pfKthread is PF_KTHREAD in the flags field of /proc/<pid>/stat.
const pfKthread = 0x00200000

// Shutdown stops the guest: it signals every other process (SIGTERM,
// then SIGKILL), syncs, unmounts the root's filesystems, remounts the
// root read-only, and reboots. The reboot is what ends the VM, because
// Firecracker (reboot=k) and QEMU (-no-reboot) exit when the guest
// reboots. Shutdown never returns. Outside a guest's PID 1 it panics
// without touching the system.
func Shutdown() {
	if err := checkGuestInit(os.Getpid(), os.Getenv(initEnv)); err != nil {
		panic("guestinit.Shutdown outside a guest: " + err.Error())
	}
	slog.Info("guest shutting down")
	unix.Sync()
	stopProcesses()
	unix.Sync()
	unmountFilesystems()
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	// Exiting PID 1 makes the kernel panic, and panic=-1 turns that into
	// a reboot.
	slog.Error("reboot failed, exiting init instead", "error", err)
	os.Exit(1)
}

// stopProcesses sends SIGTERM to every process but init, waits up to
// termWait for them to exit, then sends SIGKILL and waits up to killWait.
func stopProcesses() {
	for _, s := range []struct {
		sig  unix.Signal
		wait time.Duration
	}{{unix.SIGTERM, termWait}, {unix.SIGKILL, killWait}} {
		if err := unix.Kill(-1, s.sig); err != nil && err != unix.ESRCH {
			slog.Warn("signal all processes", "signal", s.sig, "error", err)
		}
		deadline := time.Now().Add(s.wait)
		for liveProcesses() > 0 && time.Now().Before(deadline) {
			time.Sleep(pollInterval)
		}
	}
	if n := liveProcesses(); n > 0 {
		slog.Warn("processes still running at shutdown", "count", n)
	}
}

// liveProcesses counts the processes other than init that are neither
// kernel threads nor zombies.
func liveProcesses() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The fields after the command name's closing parenthesis are
		// state, ppid, pgrp, session, tty_nr, tpgid, flags.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		fields := bytes.Fields(rest)
		if len(fields) < 7 || string(fields[0]) == "Z" || string(fields[0]) == "X" {
			continue
		}
		flags, err := strconv.ParseUint(string(fields[6]), 10, 64)
		if err == nil && flags&pfKthread != 0 {
			continue
		}
		n++
	}
	return n
}

// unmountFilesystems unmounts every mount but "/" and the pseudo
// filesystems, then remounts "/" read-only, because the root cannot be
// unmounted while init runs from it. Failures are logged, since the
// reboot follows regardless.
func unmountFilesystems() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		slog.Warn("read mounts for unmounting", "error", err)
	} else {
		entries, err := parseMountinfo(f)
		f.Close()
		if err != nil {
			slog.Warn("parse /proc/self/mountinfo", "error", err)
		}
		for _, target := range unmountOrder(entries) {
			if err := unix.Unmount(target, 0); err != nil {
				slog.Warn("unmount", "target", target, "error", err)
			}
		}
	}
	err = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	if err != nil {
		slog.Warn("remount / read-only", "error", fmt.Errorf("mount -o remount,ro /: %w", err))
	}
}

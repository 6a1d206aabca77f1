package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const supported = true

// hostTSCKHz returns the host TSC frequency in kHz and the source it came
// from. It tries, in order:
//
//  1. /sys/devices/system/cpu/cpu0/tsc_freq_khz, which some kernels
//     provide.
//  2. The kernel log, which holds the kernel's own tsc_khz: the line
//     "tsc: Refined TSC clocksource calibration: N MHz", else
//     "tsc: Detected N MHz TSC", else "tsc: Detected N MHz processor"
//     (the kernel prints a separate TSC line only when the TSC rate
//     differs from the processor's). Reading it needs root, and the lines
//     are gone once the ring buffer wraps.
//  3. "cpu MHz" of the first processor in /proc/cpuinfo, times 1000,
//     rounded. On CPUs without APERF/MPERF and without a cpufreq driver
//     (typical of VMs) it is the boot-time calibration. Elsewhere it is
//     the current clock, which differs from the TSC rate, so set
//     Config.TSCKHz on such hosts if the kernel log no longer has the
//     TSC lines.
func hostTSCKHz() (int, string, error) {
	if khz, err := readTSCFreqSysfs(); err == nil {
		return khz, "tsc_freq_khz", nil
	}
	if khz, err := readTSCFromKernelLog(); err == nil {
		return khz, "kernel log", nil
	}
	khz, err := readCPUInfoKHz()
	if err != nil {
		return 0, "", fmt.Errorf("read host tsc frequency: %w: set the tsc frequency in the qemu driver config", err)
	}
	return khz, "/proc/cpuinfo cpu MHz", nil
}

func readTSCFreqSysfs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
	if err != nil {
		return 0, err
	}
	khz, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || khz <= 0 {
		return 0, fmt.Errorf("invalid tsc_freq_khz %q", b)
	}
	return khz, nil
}

// readTSCFromKernelLog reads /dev/kmsg from its oldest record; each read
// returns one record. It uses raw reads, because an *os.File would park
// on the poller at the end of the log instead of returning EAGAIN.
func readTSCFromKernelLog() (int, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open /dev/kmsg: %w", err)
	}
	defer unix.Close(fd)

	var refined, tsc, processor string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // a record was overwritten while reading
		}
		if err != nil || n <= 0 {
			break // EAGAIN at the end of the log
		}
		_, msg, ok := bytes.Cut(buf[:n], []byte(";"))
		if !ok {
			continue
		}
		line := string(bytes.TrimSpace(msg))
		switch {
		case strings.HasPrefix(line, "tsc: Refined TSC clocksource calibration: "):
			refined = strings.TrimPrefix(line, "tsc: Refined TSC clocksource calibration: ")
		case strings.HasPrefix(line, "tsc: Detected ") && strings.HasSuffix(line, " MHz TSC"):
			tsc = strings.TrimSuffix(strings.TrimPrefix(line, "tsc: Detected "), " TSC")
		case strings.HasPrefix(line, "tsc: Detected ") && strings.HasSuffix(line, " MHz processor"):
			processor = strings.TrimSuffix(strings.TrimPrefix(line, "tsc: Detected "), " processor")
		}
	}
	for _, v := range []string{refined, tsc, processor} {
		if v != "" {
			return parseMHz(strings.TrimSuffix(v, " MHz"))
		}
	}
	return 0, errors.New("no tsc frequency in the kernel log")
}

func readCPUInfoKHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCPUInfoKHz(f)
}

func parseCPUInfoKHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(key) == "cpu MHz" {
			return parseMHz(strings.TrimSpace(value))
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New(`no "cpu MHz" line in /proc/cpuinfo`)
}

func parseMHz(s string) (int, error) {
	mhz, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || mhz <= 0 {
		return 0, fmt.Errorf("invalid frequency %q MHz", s)
	}
	return int(math.Round(mhz * 1000)), nil
}

// hostKernelRelease returns uname -r.
func hostKernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// openKVM checks that /dev/kvm can be opened for reading and writing, as
// QEMU opens it.
func openKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// checkTun checks that TAP devices can be attached, which QEMU does by
// opening /dev/net/tun.
func checkTun() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w: load the tun module or give the hearth daemon access to /dev/net/tun", err)
	}
	return f.Close()
}

// processAttr puts QEMU in its own process group, so a signal sent to the
// group also reaches the helpers QEMU starts (for example the shell of an
// exec: migration). Pdeathsig is not set: Go delivers it when the thread
// that started the child exits, not when the daemon does.
func processAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// killProcessGroup sends SIGKILL to the process group led by pid.
func killProcessGroup(pid int) error {
	err := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

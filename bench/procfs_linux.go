package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// rssBytes returns a process's resident set size from the VmRSS line of
// /proc/PID/status.
func rssBytes(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	return parseVmRSS(string(data))
}

// parseVmRSS returns the VmRSS of a /proc/PID/status text in bytes.
func parseVmRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		value, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid VmRSS line %q", line)
		}
		return kib << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS line in process status")
}

// processesOf returns the IDs of the live processes whose executable is
// the file bin, also when they see it under another path (a bind mount
// in a chroot).
func processesOf(bin string) []int {
	want, err := os.Stat(bin)
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		got, err := os.Stat(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && os.SameFile(got, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

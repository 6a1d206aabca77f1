package network

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

func selfPID() int { return os.Getpid() }

// ProcessOwner returns the Owner for the running process pid.
func ProcessOwner(pid int) (Owner, error) {
	if pid <= 0 {
		return Owner{}, fmt.Errorf("process owner: invalid pid %d: %w", pid, ErrInvalid)
	}
	state, start, err := readProcStat(pid)
	if err != nil {
		return Owner{}, err
	}
	if state == 'Z' || state == 'X' {
		return Owner{}, fmt.Errorf("process owner: pid %d has exited: %w", pid, ErrNotFound)
	}
	return Owner{PID: pid, StartTime: start}, nil
}

// Alive reports whether the owner process still runs. A PID that is gone,
// a zombie, or a PID reused by a process with another start time counts as
// exited. When /proc cannot be read for any other reason, Alive returns
// true, because reclaiming a live lease would break a running sandbox.
func (o Owner) Alive() bool {
	if o.PID <= 0 {
		return false
	}
	state, start, err := readProcStat(o.PID)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return false
	}
	if err != nil {
		return true
	}
	return start == o.StartTime && state != 'Z' && state != 'X'
}

// readProcStat returns the state (field 3) and start time (field 22) of
// /proc/<pid>/stat. The command name (field 2) may contain spaces and
// parentheses, so parsing starts after its last ')'.
func readProcStat(pid int) (state byte, start uint64, err error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("read process state: %w", err)
	}
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("parse %s: no command name", path)
	}
	fields := bytes.Fields(data[end+1:])
	// fields[0] is field 3, so field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("parse %s: %d fields after the command name, want at least 20", path, len(fields))
	}
	start, err = strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse %s: start time: %w", path, err)
	}
	return fields[0][0], start, nil
}

package agent

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair sized cols×rows. The master is
// non-blocking and registered with the Go poller, so reads on it honour
// deadlines (the output drain depends on that). The slave is a blocking
// descriptor meant to become the child's stdin, stdout and stderr.
//
// github.com/creack/pty (v1.1.24) is not used here because its Open and
// Setsize call File.Fd on the master, which switches it to blocking mode and
// disables read deadlines.
func openPTY(cols, rows uint16) (master, slave *os.File, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	master = os.NewFile(uintptr(mfd), "/dev/ptmx")
	defer func() {
		if err != nil {
			master.Close()
		}
	}()

	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return nil, nil, fmt.Errorf("get pty number: %w", err)
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	slave = os.NewFile(uintptr(sfd), name)

	if err := setWinsize(master, cols, rows); err != nil {
		slave.Close()
		return nil, nil, err
	}
	return master, slave, nil
}

// setWinsize applies TIOCSWINSZ; the kernel then sends SIGWINCH to the
// terminal's foreground process group. It goes through SyscallConn rather
// than File.Fd so that the master stays non-blocking.
func setWinsize(master *os.File, cols, rows uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return fmt.Errorf("set terminal size %dx%d: %w", cols, rows, err)
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows})
	})
	if err == nil {
		err = ioctlErr
	}
	if err != nil {
		return fmt.Errorf("set terminal size %dx%d: %w", cols, rows, err)
	}
	return nil
}

// foregroundGroup returns the foreground process group of the terminal
// whose master is given (tcgetpgrp through TIOCGPGRP, which Linux also
// answers on the master side).
func foregroundGroup(master *os.File) (int, error) {
	rc, err := master.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pgid int
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		pgid, ioctlErr = unix.IoctlGetInt(int(fd), unix.TIOCGPGRP)
	})
	if err == nil {
		err = ioctlErr
	}
	return pgid, err
}

package agent

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOpenPTYMasterDeadlines checks that reads on the master honour
// deadlines, which the output drain relies on to stop reading.
func TestOpenPTYMasterDeadlines(t *testing.T) {
	master, slave, err := openPTY(100, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer slave.Close()

	ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Col != 100 || ws.Row != 30 {
		t.Errorf("got initial terminal size %dx%d, want 100x30", ws.Col, ws.Row)
	}

	if err := master.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatalf("set read deadline on the master: %v", err)
	}
	_, err = master.Read(make([]byte, 16))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("got read error %v, want os.ErrDeadlineExceeded", err)
	}

	if err := setWinsize(master, 132, 43); err != nil {
		t.Fatal(err)
	}
	ws, err = unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		t.Fatal(err)
	}
	if ws.Col != 132 || ws.Row != 43 {
		t.Errorf("got terminal size %dx%d, want 132x43", ws.Col, ws.Row)
	}
	if err := master.SetReadDeadline(time.Now()); err != nil {
		t.Errorf("set read deadline after resize: got %v, want the master still non-blocking", err)
	}
}

//go:build unix

package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

// terminal is the local terminal of an interactive exec: stdin for raw
// mode, stdout for the window size.
type terminal struct {
	in, out int
}

// openTerminal returns the local terminal when want is set and std's
// input is a terminal, else nil.
func openTerminal(want bool, std stdio) *terminal {
	inFile, ok := std.in.(*os.File)
	if !want || !ok || !term.IsTerminal(int(inFile.Fd())) {
		return nil
	}
	t := &terminal{in: int(inFile.Fd()), out: int(inFile.Fd())}
	if outFile, ok := std.out.(*os.File); ok && term.IsTerminal(int(outFile.Fd())) {
		t.out = int(outFile.Fd())
	}
	return t
}

// size returns the window size, or nil when it cannot be read, which
// leaves the agent's default of 80 columns by 24 rows.
func (t *terminal) size() *sandboxv1.TerminalSize {
	width, height, err := term.GetSize(t.out)
	if err != nil || width <= 0 || height <= 0 {
		return nil
	}
	return &sandboxv1.TerminalSize{Width: uint32(width), Height: uint32(height)}
}

// makeRaw puts the terminal in raw mode, so keys such as Ctrl-C reach
// the command instead of this process, and returns the function that
// restores the previous mode.
func (t *terminal) makeRaw() (restore func(), err error) {
	state, err := term.MakeRaw(t.in)
	if err != nil {
		return nil, fmt.Errorf("put the terminal in raw mode: %w", err)
	}
	return func() { _ = term.Restore(t.in, state) }, nil
}

// watchResize calls send with the new size on every SIGWINCH until the
// returned stop function is called.
func (t *terminal) watchResize(send func(*sandboxv1.TerminalSize)) (stop func()) {
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-winch:
				if size := t.size(); size != nil {
					send(size)
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
	}
}

//go:build !unix

package cli

import "github.com/hearthvm/hearth/api/sandboxv1"

// terminal is unsupported here: an interactive exec forwards stdin
// without raw mode or window sizes.
type terminal struct{}

func openTerminal(bool, stdio) *terminal                           { return nil }
func (*terminal) size() *sandboxv1.TerminalSize                    { return nil }
func (*terminal) makeRaw() (func(), error)                         { return func() {}, nil }
func (*terminal) watchResize(func(*sandboxv1.TerminalSize)) func() { return func() {} }

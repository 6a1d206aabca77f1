package server

import (
	"strconv"
	"strings"
	"syscall"

	"github.com/hearthvm/hearth/agentproto"
)

// linuxSignals maps the names of the standard Linux signals to their
// numbers on x86-64 and arm64 Linux (signal(7)). Guests run Linux, so the
// table is fixed rather than taken from the host the daemon runs on.
var linuxSignals = map[string]syscall.Signal{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
	"FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
	"TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21,
	"TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
	"IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}

// parseSignal accepts a signal name with or without the SIG prefix, in
// any case ("SIGTERM", "term"), or a Linux signal number from 1 to 64.
func parseSignal(field, s string) (syscall.Signal, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, invalidArgument(field, "the signal is empty; give a name such as SIGTERM or a number from 1 to 64")
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n < 1 || n > agentproto.MaxSignal {
			return 0, invalidArgument(field, "signal number "+s+" is outside 1 to 64")
		}
		return syscall.Signal(n), nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if sig, ok := linuxSignals[name]; ok {
		return sig, nil
	}
	return 0, invalidArgument(field, "unknown signal "+strconv.Quote(s)+"; use a name such as SIGTERM or SIGINT, or a number from 1 to 64")
}

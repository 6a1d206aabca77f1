package agentlink

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Session handshake lines of the multiplexed serial transport. The package
// documentation describes the protocol.
const (
	helloPrefix = "HEARTH-HELLO "
	ackPrefix   = "HEARTH-ACK "
	nonceLen    = 32 // hex digits of a 16-byte random nonce
	helloLen    = len(helloPrefix) + nonceLen + 1
)

// maxPortWrite is the largest write handed to the port at once. A guest
// write() on a virtio-serial port takes at most 32 KiB per call, and the
// writer checks between chunks whether its session has ended.
const maxPortWrite = 32 << 10

// yamuxVersion is the first byte of every yamux frame header (protocol
// version 0). A hello line never starts with it, which lets the agent spot
// a new host's hello where it expects the next frame.
const (
	yamuxVersion    = 0
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// maxStreamWindow is the yamux receive window per stream. With yamux's
// default of 256 KiB one stream stalls on a round trip every 256 KiB, so
// the window is raised to 2 MiB (an estimate, not a measured optimum).
const maxStreamWindow = 2 << 20

// DefaultKeepAliveInterval is the default interval of yamux keepalive
// pings on the serial transport. A peer that sends no ping reply
// within yamux's ConnectionWriteTimeout (10 s) ends the session.
const DefaultKeepAliveInterval = 15 * time.Second

// newNonce returns 16 random bytes in lower-case hex.
func newNonce() string {
	var b [nonceLen / 2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func helloLine(nonce string) []byte { return []byte(helloPrefix + nonce + "\n") }

func ackLine(nonce string) []byte { return []byte(ackPrefix + nonce + "\n") }

// findHello returns the nonce of the last complete hello line in buf and
// the number of bytes of buf that may be discarded. Bytes that could be the
// start of a hello line still being received are kept.
func findHello(buf []byte) (nonce string, discard int) {
	for {
		i := bytes.Index(buf[discard:], []byte(helloPrefix))
		if i < 0 {
			// Keep a tail that may be the start of the prefix.
			keep := min(len(buf)-discard, len(helloPrefix)-1)
			return nonce, len(buf) - keep
		}
		start := discard + i
		if len(buf)-start < helloLen {
			return nonce, start
		}
		line := buf[start : start+helloLen]
		if candidate, ok := parseHello(line); ok {
			nonce = candidate
			discard = start + helloLen
			continue
		}
		discard = start + 1
	}
}

// parseHello parses a complete hello line, newline included.
func parseHello(line []byte) (string, bool) {
	if len(line) != helloLen || line[helloLen-1] != '\n' {
		return "", false
	}
	nonce := string(line[len(helloPrefix) : helloLen-1])
	if !isLowerHex(nonce) {
		return "", false
	}
	return nonce, true
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// yamuxConfig returns the yamux configuration of both ends.
func yamuxConfig(keepAlive time.Duration, log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = maxStreamWindow
	cfg.EnableKeepAlive = keepAlive > 0
	if keepAlive > 0 {
		cfg.KeepAliveInterval = keepAlive
	}
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{log: log}
	return cfg
}

// yamuxLogger forwards yamux's log lines to slog. A failed keepalive is
// logged at Warn level because it ends a session whose peer is still
// connected. Everything else is logged at Debug level: most of it is the
// teardown of a session that ended, which the callers log themselves.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) { l.emit(strings.TrimSpace(fmt.Sprint(v...))) }

func (l yamuxLogger) Printf(format string, v ...any) { l.emit(fmt.Sprintf(format, v...)) }

func (l yamuxLogger) Println(v ...any) { l.emit(strings.TrimSpace(fmt.Sprintln(v...))) }

func (l yamuxLogger) emit(msg string) {
	if strings.Contains(msg, "keepalive failed") {
		l.log.Warn(msg)
		return
	}
	l.log.Debug(msg)
}

// loggerOrDefault returns log, or slog.Default() when log is nil.
func loggerOrDefault(log *slog.Logger) *slog.Logger {
	if log != nil {
		return log
	}
	return slog.Default()
}

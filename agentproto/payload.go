package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Default terminal size when START leaves it out.
const (
	DefaultTTYWidth  = 80
	DefaultTTYHeight = 24
)

// StartRequest is the JSON payload of START. Field names and types follow
// the reference agent; zero values mean "default".
type StartRequest struct {
	Cmd            []string          `json:"cmd"`
	Env            map[string]string `json:"env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	User           string            `json:"user,omitempty"`
	TTY            bool              `json:"tty,omitempty"`
	TTYWidth       uint16            `json:"tty_width,omitempty"`
	TTYHeight      uint16            `json:"tty_height,omitempty"`
	TimeoutSeconds uint32            `json:"timeout_seconds,omitempty"`

	// ExitDetail asks the agent to send EXIT_DETAIL just before EXIT
	// (hearth addition; a reference host never sets it).
	ExitDetail bool `json:"exit_detail,omitempty"`
}

// DecodeStart parses and validates a START payload.
func DecodeStart(payload []byte) (StartRequest, error) {
	var req StartRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return StartRequest{}, fmt.Errorf("invalid START payload: %w", err)
	}
	if len(req.Cmd) == 0 || req.Cmd[0] == "" {
		return StartRequest{}, fmt.Errorf("invalid START payload: cmd is empty")
	}
	if req.TTYWidth == 0 {
		req.TTYWidth = DefaultTTYWidth
	}
	if req.TTYHeight == 0 {
		req.TTYHeight = DefaultTTYHeight
	}
	return req, nil
}

// EncodeResize encodes a RESIZE payload: columns, then rows.
func EncodeResize(width, height uint16) []byte {
	b := binary.LittleEndian.AppendUint16(nil, width)
	return binary.LittleEndian.AppendUint16(b, height)
}

// DecodeResize parses a RESIZE payload into columns and rows.
func DecodeResize(payload []byte) (width, height uint16, err error) {
	if len(payload) != 4 {
		return 0, 0, fmt.Errorf("invalid RESIZE payload: %d bytes, want 4", len(payload))
	}
	return binary.LittleEndian.Uint16(payload), binary.LittleEndian.Uint16(payload[2:]), nil
}

// EncodeExit encodes an EXIT payload.
func EncodeExit(code int32) []byte {
	return binary.LittleEndian.AppendUint32(nil, uint32(code))
}

// DecodeExit parses an EXIT payload.
func DecodeExit(payload []byte) (int32, error) {
	if len(payload) != 4 {
		return 0, fmt.Errorf("invalid EXIT payload: %d bytes, want 4", len(payload))
	}
	return int32(binary.LittleEndian.Uint32(payload)), nil
}

// EncodeClockSync encodes a CLOCK_SYNC payload from a wall-clock time.
func EncodeClockSync(t time.Time) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(t.Unix()))
	return binary.LittleEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

// DecodeClockSync parses a CLOCK_SYNC payload.
func DecodeClockSync(payload []byte) (time.Time, error) {
	if len(payload) != 12 {
		return time.Time{}, fmt.Errorf("invalid CLOCK_SYNC payload: %d bytes, want 12", len(payload))
	}
	sec := int64(binary.LittleEndian.Uint64(payload))
	nsec := binary.LittleEndian.Uint32(payload[8:])
	if nsec >= 1e9 {
		return time.Time{}, fmt.Errorf("invalid CLOCK_SYNC payload: nanoseconds %d out of range", nsec)
	}
	return time.Unix(sec, int64(nsec)), nil
}

// ShutdownRequest is the JSON payload of SHUTDOWN. The agent ends its
// workloads, syncs and unmounts filesystems, then reboots the guest, which
// is what makes both Firecracker (with reboot=k) and QEMU (with -no-reboot)
// exit.
type ShutdownRequest struct {
	// GraceMillis is how long workloads get after SIGTERM before SIGKILL.
	GraceMillis uint32 `json:"grace_ms,omitempty"`
}

// NetConfigRequest is the JSON payload of NETCONFIG: the IPv4 address a
// restored clone takes over from its snapshot's.
type NetConfigRequest struct {
	// Address is the interface's new address with its prefix length,
	// such as "172.20.0.7/16".
	Address string `json:"address"`
	// Gateway is the next hop of the default route. Empty means no
	// default route.
	Gateway string `json:"gateway,omitempty"`
	// Interface is the interface to configure; empty means eth0.
	Interface string `json:"interface,omitempty"`
	// Hostname, when set, replaces the guest's hostname, which a clone
	// otherwise keeps from its origin.
	Hostname string `json:"hostname,omitempty"`
}

// MaxHostname is the longest hostname Linux accepts (HOST_NAME_MAX).
const MaxHostname = 64

// DefaultInterface is the interface NETCONFIG configures when the request
// names none.
const DefaultInterface = "eth0"

// NetConfig is a validated NETCONFIG request.
type NetConfig struct {
	Interface string
	Address   netip.Prefix
	Gateway   netip.Addr // invalid (zero) when there is no default route
	Hostname  string     // empty: leave the hostname alone
}

// DecodeNetConfig parses and validates a NETCONFIG payload. Address and
// gateway must be IPv4, and the gateway must lie inside the address's
// subnet.
func DecodeNetConfig(payload []byte) (NetConfig, error) {
	var req NetConfigRequest
	if err := json.Unmarshal(payload, &req); err != nil {
		return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: %w", err)
	}
	cfg := NetConfig{Interface: req.Interface}
	if cfg.Interface == "" {
		cfg.Interface = DefaultInterface
	}
	if len(cfg.Interface) > 15 || strings.ContainsAny(cfg.Interface, "/ \x00") {
		return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: interface name %q is not a valid Linux interface name", cfg.Interface)
	}

	prefix, err := netip.ParsePrefix(req.Address)
	if err != nil || !prefix.Addr().Is4() {
		return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: address %q is not an IPv4 address with a prefix length such as 172.20.0.7/16", req.Address)
	}
	cfg.Address = prefix

	if req.Gateway != "" {
		gw, err := netip.ParseAddr(req.Gateway)
		if err != nil || !gw.Is4() {
			return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: gateway %q is not an IPv4 address", req.Gateway)
		}
		if !prefix.Masked().Contains(gw) {
			return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: gateway %s is outside the subnet %s", gw, prefix.Masked())
		}
		cfg.Gateway = gw
	}
	if len(req.Hostname) > MaxHostname || strings.ContainsFunc(req.Hostname, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return NetConfig{}, fmt.Errorf("invalid NETCONFIG payload: hostname %q: use at most %d printable characters without spaces",
			req.Hostname, MaxHostname)
	}
	cfg.Hostname = req.Hostname
	return cfg, nil
}

// EncodeSignal encodes a SIGNAL payload.
func EncodeSignal(signal uint32) []byte {
	return binary.LittleEndian.AppendUint32(nil, signal)
}

// MaxSignal is the highest Linux signal number (SIGRTMAX).
const MaxSignal = 64

// DecodeSignal parses a SIGNAL payload: a signal number from 1 to 64.
func DecodeSignal(payload []byte) (uint32, error) {
	if len(payload) != 4 {
		return 0, fmt.Errorf("invalid SIGNAL payload: %d bytes, want 4", len(payload))
	}
	sig := binary.LittleEndian.Uint32(payload)
	if sig == 0 || sig > MaxSignal {
		return 0, fmt.Errorf("invalid SIGNAL payload: signal number %d out of range 1-%d", sig, MaxSignal)
	}
	return sig, nil
}

// Reasons an exec session ended, as EXIT_DETAIL reports them.
const (
	ReasonExited        = "exited"         // the command exited on its own
	ReasonSignaled      = "signaled"       // a signal killed the command
	ReasonTimedOut      = "timed out"      // timeout_seconds expired; the agent killed it
	ReasonCannotStart   = "cannot start"   // the command exists but could not be started
	ReasonNotFound      = "not found"      // the command does not exist
	ReasonProtocolError = "protocol error" // the host sent a malformed frame
	ReasonRejected      = "rejected"       // the agent ran nothing: session limit or shutdown
)

// ExitDetail is the JSON payload of EXIT_DETAIL. ExitCode always equals
// the code of the EXIT frame that follows.
type ExitDetail struct {
	ExitCode int32 `json:"exit_code"`
	// Signal names the signal that killed the command, such as
	// "SIGKILL"; empty when the command exited on its own.
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Reason is one of the Reason constants.
	Reason string `json:"reason"`
}

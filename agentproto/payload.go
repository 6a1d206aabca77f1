package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
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

// WriteRequest is the JSON payload of WRITE_REQ.
type WriteRequest struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode"`
}

// ReadRequest is the JSON payload of READ_REQ.
type ReadRequest struct {
	Path string `json:"path"`
}

// ShutdownRequest is the JSON payload of SHUTDOWN. The agent ends its
// workloads, syncs and unmounts filesystems, then reboots the guest, which
// is what makes both Firecracker (with reboot=k) and QEMU (with -no-reboot)
// exit.
type ShutdownRequest struct {
	// GraceMillis is how long workloads get after SIGTERM before SIGKILL.
	GraceMillis uint32 `json:"grace_ms,omitempty"`
}

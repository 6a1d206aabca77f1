// Package agentproto defines the wire format spoken between the host and
// hearth-agent: the length-prefixed frames of the exec channel (agent port
// 52) and the file channel (agent port 53), their payloads, and the
// CONNECT/OK line that opens every stream on a hybrid vsock or on the
// multiplexed serial transport.
//
// The frame layout and the frame types below 0x40 are byte-compatible with
// the reference agent of arcbox-vm. Types from 0x40 upward are hearth
// additions; the agent sends one only in answer to a request that only a
// hearth host makes, so a reference host never receives one.
//
// The package owns encoding and decoding only; it opens no connections.
package agentproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Agent ports. Each port carries one session per connection.
const (
	PortExec    uint32 = 52
	PortFile    uint32 = 53
	PortControl uint32 = 54 // hearth addition: shutdown and health
)

// FrameType is the first byte of every frame.
type FrameType uint8

// Exec channel frame types (reference).
const (
	TypeStart     FrameType = 0x01 // host → agent, JSON StartRequest
	TypeStdin     FrameType = 0x02 // host → agent, raw bytes
	TypeResize    FrameType = 0x03 // host → agent, [cols u16 LE][rows u16 LE]
	TypeEOF       FrameType = 0x04 // host → agent, empty: stdin closed
	TypeClockSync FrameType = 0x05 // host → agent, [unix s i64 LE][ns u32 LE]
	TypeStdout    FrameType = 0x10 // agent → host, raw bytes
	TypeStderr    FrameType = 0x11 // agent → host, raw bytes
	TypeExit      FrameType = 0x12 // agent → host, [exit code i32 LE], last frame
)

// File channel frame types (reference).
const (
	TypeWriteReq FrameType = 0x20 // host → agent, JSON WriteRequest
	TypeData     FrameType = 0x21 // both, one chunk of file bytes
	TypeDone     FrameType = 0x22 // both, empty: end of data
	TypeReadReq  FrameType = 0x23 // host → agent, JSON ReadRequest
	TypeAck      FrameType = 0x30 // agent → host, empty: success
	TypeErr      FrameType = 0x31 // agent → host, UTF-8 error message
)

// Control channel frame types (hearth additions, port 54).
const (
	TypeShutdown FrameType = 0x40 // host → agent, JSON ShutdownRequest; answered by ACK
	TypePing     FrameType = 0x41 // host → agent, empty; answered by ACK
)

// HeaderSize is the size of a frame header: one type byte and a
// little-endian u32 payload length.
const HeaderSize = 5

// MaxPayload is the largest payload either side accepts (16 MiB).
const MaxPayload = 16 << 20

// ErrPayloadTooLarge is returned for a frame whose length exceeds MaxPayload.
var ErrPayloadTooLarge = errors.New("agentproto: frame payload exceeds 16 MiB")

// Frame is one decoded frame.
type Frame struct {
	Type    FrameType
	Payload []byte
}

// String names known frame types for error messages and logs.
func (t FrameType) String() string {
	if name, ok := typeNames[t]; ok {
		return name
	}
	return fmt.Sprintf("0x%02x", uint8(t))
}

var typeNames = map[FrameType]string{
	TypeStart: "START", TypeStdin: "STDIN", TypeResize: "RESIZE",
	TypeEOF: "EOF", TypeClockSync: "CLOCK_SYNC", TypeStdout: "STDOUT",
	TypeStderr: "STDERR", TypeExit: "EXIT", TypeWriteReq: "WRITE_REQ",
	TypeData: "DATA", TypeDone: "DONE", TypeReadReq: "READ_REQ",
	TypeAck: "ACK", TypeErr: "ERR", TypeShutdown: "SHUTDOWN", TypePing: "PING",
}

// AppendFrame appends the encoding of one frame to dst.
func AppendFrame(dst []byte, t FrameType, payload []byte) []byte {
	dst = append(dst, byte(t))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// WriteFrame writes one frame with a single Write call, so frames written
// by concurrent callers that serialise their calls never interleave.
func WriteFrame(w io.Writer, t FrameType, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrPayloadTooLarge
	}
	_, err := w.Write(AppendFrame(make([]byte, 0, HeaderSize+len(payload)), t, payload))
	return err
}

// ReadFrame reads one frame. It returns io.EOF only when the stream ends
// cleanly before the first header byte, and io.ErrUnexpectedEOF when it
// ends inside a frame.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > MaxPayload {
		return Frame{}, fmt.Errorf("%w: type %s, length %d", ErrPayloadTooLarge, FrameType(hdr[0]), n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: FrameType(hdr[0]), Payload: payload}, nil
}

// Package agentproto defines the wire format spoken between the host and
// hearth-agent: the length-prefixed frames of the exec channel (agent port
// 52) and the file channel (agent port 53), their payloads, and the
// CONNECT/OK line that opens every stream on a hybrid vsock or on the
// multiplexed serial transport.
//
// The frame layout and the frame types below 0x40 are byte-compatible with
// the reference agent of arcbox-vm. Types from 0x40 upward are hearth
// additions; the agent sends one only in answer to a request that only a
// hearth host makes (a hearth frame type, or an optional request field
// that a reference host never sets), so a reference host never receives
// one. The additions:
//
//   - control port: NETCONFIG (0x42), answered by ACK or ERR;
//   - exec port: SIGNAL (0x43) from the host while a command runs, and
//     EXIT_DETAIL (0x44) just before EXIT when START sets exit_detail;
//   - file port: STAT (0x45), LIST (0x46), MKDIR (0x47), REMOVE (0x48)
//     and RENAME (0x49) requests, answered by FILE_INFO (0x4a), a stream
//     of LIST_ENTRIES (0x4b) frames ended by DONE, or ACK, each or ERR;
//     DIGEST (0x4c) carries the size and one checksum of a transfer
//     (CRC-32C or SHA-256), sent by the host before DONE of a write and
//     by the agent after DONE of a read whose READ_REQ sets digest;
//     WRITE_REQ takes the optional fields uid, gid, size, sha256, mkdirs
//     and checksum, and READ_REQ the optional fields digest and
//     checksum. An absent checksum means SHA-256.
//
// The package owns encoding and decoding only; it opens no connections.
package agentproto

import (
	"bufio"
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
	TypeShutdown  FrameType = 0x40 // host → agent, JSON ShutdownRequest; answered by ACK
	TypePing      FrameType = 0x41 // host → agent, empty; answered by ACK
	TypeNetConfig FrameType = 0x42 // host → agent, JSON NetConfigRequest; answered by ACK
)

// Exec channel frame types (hearth additions, port 52).
const (
	TypeSignal     FrameType = 0x43 // host → agent, [signal number u32 LE]
	TypeExitDetail FrameType = 0x44 // agent → host, JSON ExitDetail, just before EXIT
)

// File channel frame types (hearth additions, port 53).
const (
	TypeStat        FrameType = 0x45 // host → agent, JSON PathRequest; answered by FILE_INFO
	TypeList        FrameType = 0x46 // host → agent, JSON PathRequest; answered by LIST_ENTRIES…, DONE
	TypeMkdir       FrameType = 0x47 // host → agent, JSON MkdirRequest; answered by ACK
	TypeRemove      FrameType = 0x48 // host → agent, JSON RemoveRequest; answered by ACK
	TypeRename      FrameType = 0x49 // host → agent, JSON RenameRequest; answered by ACK
	TypeFileInfo    FrameType = 0x4a // agent → host, JSON FileInfo
	TypeListEntries FrameType = 0x4b // agent → host, JSON array of FileInfo
	TypeDigest      FrameType = 0x4c // both, JSON Digest of the bytes sent
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
	TypeNetConfig: "NETCONFIG", TypeSignal: "SIGNAL", TypeExitDetail: "EXIT_DETAIL",
	TypeStat: "STAT", TypeList: "LIST", TypeMkdir: "MKDIR", TypeRemove: "REMOVE",
	TypeRename: "RENAME", TypeFileInfo: "FILE_INFO", TypeListEntries: "LIST_ENTRIES",
	TypeDigest: "DIGEST",
}

// PutHeader writes the header of a frame of type t with an n-byte payload
// into b[:HeaderSize]. Together with a single Write of header and payload
// it lets a sender reuse one buffer for every frame.
func PutHeader(b []byte, t FrameType, n int) {
	b[0] = byte(t)
	binary.LittleEndian.PutUint32(b[1:HeaderSize], uint32(n))
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
	t, n, err := ReadHeader(r)
	if err != nil {
		return Frame{}, err
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: t, Payload: payload}, nil
}

// ReadHeader reads one frame header and returns the frame type and the
// payload length, which it checks against MaxPayload. The caller then
// reads exactly n payload bytes, for example with io.CopyN, which lets
// it stream a DATA payload without holding it in memory. Its errors are
// those of ReadFrame.
func ReadHeader(r io.Reader) (t FrameType, n int, err error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, err
	}
	length := binary.LittleEndian.Uint32(hdr[1:])
	if length > MaxPayload {
		return 0, 0, fmt.Errorf("%w: type %s, length %d", ErrPayloadTooLarge, FrameType(hdr[0]), length)
	}
	return FrameType(hdr[0]), int(length), nil
}

// frameReaderBuffer is the read-ahead of a FrameReader: a few small
// frames, such as EXIT_DETAIL and EXIT, arrive with one read.
const frameReaderBuffer = 8 << 10

// maxRetainedPayload is the largest payload buffer a FrameReader keeps
// between frames. A larger payload gets a buffer of its own, so one big
// frame does not pin its size for the life of the connection.
const maxRetainedPayload = 1 << 20

// FrameReader reads frames from a stream through a read-ahead buffer and
// one reused payload buffer, so reading a frame allocates nothing once
// the buffer has grown. Once a stream has a FrameReader, every read of
// the stream must go through it, since it may hold bytes read ahead. It
// is not safe for concurrent use.
type FrameReader struct {
	br      *bufio.Reader
	payload []byte
}

// NewFrameReader returns a FrameReader reading from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{br: bufio.NewReaderSize(r, frameReaderBuffer)}
}

// Next reads one frame. Its payload is valid only until the next call of
// any method of fr. Its errors are those of ReadFrame.
func (fr *FrameReader) Next() (Frame, error) {
	t, n, err := fr.ReadHeader()
	if err != nil {
		return Frame{}, err
	}
	var payload []byte
	switch {
	case n <= cap(fr.payload):
		payload = fr.payload[:n]
	case n <= maxRetainedPayload:
		fr.payload = make([]byte, n)
		payload = fr.payload
	default:
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(fr.br, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: t, Payload: payload}, nil
}

// ReadHeader reads one frame header, as the package's ReadHeader does.
// The caller then reads the n payload bytes through fr.Read.
func (fr *FrameReader) ReadHeader() (t FrameType, n int, err error) {
	hdr, err := fr.br.Peek(HeaderSize)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	t, length := FrameType(hdr[0]), binary.LittleEndian.Uint32(hdr[1:])
	_, _ = fr.br.Discard(HeaderSize)
	if length > MaxPayload {
		return 0, 0, fmt.Errorf("%w: type %s, length %d", ErrPayloadTooLarge, t, length)
	}
	return t, int(length), nil
}

// Read reads raw stream bytes: the payload after ReadHeader. A read into
// a buffer larger than the read-ahead goes straight to the stream once
// the read-ahead is empty.
func (fr *FrameReader) Read(p []byte) (int, error) { return fr.br.Read(p) }

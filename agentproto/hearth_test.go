package agentproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestHearthFrameEncoding checks the hearth additions against bytes
// written out by hand.
func TestHearthFrameEncoding(t *testing.T) {
	tests := []struct {
		name    string
		typ     FrameType
		payload []byte
		want    []byte
	}{
		{"SIGNAL SIGTERM", TypeSignal, EncodeSignal(15), []byte{0x43, 4, 0, 0, 0, 15, 0, 0, 0}},
		{"DONE", TypeDone, nil, []byte{0x22, 0, 0, 0, 0}},
		{"NETCONFIG", TypeNetConfig, []byte(`{}`), []byte{0x42, 2, 0, 0, 0, '{', '}'}},
		{"DIGEST", TypeDigest, []byte(`{}`), []byte{0x4c, 2, 0, 0, 0, '{', '}'}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := AppendFrame(nil, tc.typ, tc.payload); !bytes.Equal(got, tc.want) {
				t.Errorf("got %x, want %x", got, tc.want)
			}
		})
	}

	hdr := make([]byte, HeaderSize)
	PutHeader(hdr, TypeData, 0x010203)
	if want := []byte{0x21, 0x03, 0x02, 0x01, 0x00}; !bytes.Equal(hdr, want) {
		t.Errorf("PutHeader: got %x, want %x", hdr, want)
	}
	typ, n, err := ReadHeader(bytes.NewReader(hdr))
	if err != nil || typ != TypeData || n != 0x010203 {
		t.Errorf("ReadHeader: got %s, %d, %v, want DATA, %d, nil", typ, n, err, 0x010203)
	}
	if _, _, err := ReadHeader(bytes.NewReader([]byte{0x21, 0x01, 0x00, 0x00, 0x01})); !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("ReadHeader over 16 MiB: got %v, want ErrPayloadTooLarge", err)
	}
}

func TestHearthFrameTypeNames(t *testing.T) {
	want := map[FrameType]string{
		0x42: "NETCONFIG", 0x43: "SIGNAL", 0x44: "EXIT_DETAIL", 0x45: "STAT", 0x46: "LIST",
		0x47: "MKDIR", 0x48: "REMOVE", 0x49: "RENAME", 0x4a: "FILE_INFO", 0x4b: "LIST_ENTRIES", 0x4c: "DIGEST",
	}
	for typ, name := range want {
		if got := typ.String(); got != name {
			t.Errorf("FrameType(0x%02x): got %q, want %q", uint8(typ), got, name)
		}
	}
}

func TestDecodeHearthPayloadErrors(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		decode  func([]byte) error
		payload string
		wantErr string // empty: accepted
	}{
		{"WRITE_REQ full", func(b []byte) error { _, err := DecodeWriteRequest(b); return err },
			`{"path":"/a","mode":4095,"uid":1,"gid":2,"size":0,"sha256":"` + sum + `","mkdirs":true}`, ""},
		{"WRITE_REQ relative path", func(b []byte) error { _, err := DecodeWriteRequest(b); return err }, `{"path":"a"}`, ""},
		{"WRITE_REQ NUL in path", func(b []byte) error { _, err := DecodeWriteRequest(b); return err }, `{"path":"/a\u0000"}`, "contains a NUL byte"},
		{"WRITE_REQ negative size", func(b []byte) error { _, err := DecodeWriteRequest(b); return err }, `{"path":"/a","size":-1}`, "size -1 is negative"},
		{"WRITE_REQ short sha256", func(b []byte) error { _, err := DecodeWriteRequest(b); return err }, `{"path":"/a","sha256":"ab"}`, "not 64 hex digits"},
		{"DIGEST bad hex", func(b []byte) error { _, err := DecodeDigest(b); return err }, `{"size":1,"sha256":"` + strings.Repeat("zz", 32) + `"}`, "not 64 hex digits"},
		{"MKDIR mode", func(b []byte) error { _, err := DecodeMkdirRequest(b); return err }, `{"path":"/d","mode":8192}`, "outside 07777"},
		{"RENAME empty target", func(b []byte) error { _, err := DecodeRenameRequest(b); return err }, `{"from":"/a"}`, "invalid RENAME payload: path is empty"},
		{"STAT garbage", func(b []byte) error { _, err := DecodePathRequest(TypeStat, b); return err }, `[`, "invalid STAT payload"},
		{"SIGNAL 64", func(b []byte) error { _, err := DecodeSignal(b); return err }, "\x40\x00\x00\x00", ""},
		{"SIGNAL 65", func(b []byte) error { _, err := DecodeSignal(b); return err }, "\x41\x00\x00\x00", "out of range 1-64"},
		{"NETCONFIG default interface", func(b []byte) error { _, err := DecodeNetConfig(b); return err }, `{"address":"10.0.0.2/8"}`, ""},
		{"NETCONFIG bad gateway", func(b []byte) error { _, err := DecodeNetConfig(b); return err }, `{"address":"10.0.0.2/8","gateway":"x"}`, "gateway \"x\" is not an IPv4 address"},
		{"NETCONFIG hostname", func(b []byte) error { _, err := DecodeNetConfig(b); return err }, `{"address":"10.0.0.2/8","hostname":"clone-1"}`, ""},
		{"NETCONFIG hostname with space", func(b []byte) error { _, err := DecodeNetConfig(b); return err }, `{"address":"10.0.0.2/8","hostname":"a b"}`, "without spaces"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.decode([]byte(tc.payload))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("got error %v, want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestFrameReader(t *testing.T) {
	var stream []byte
	stream = AppendFrame(stream, TypeStdout, []byte("hello"))
	stream = AppendFrame(stream, TypeExitDetail, []byte(`{"exit_code":0}`))
	stream = AppendFrame(stream, TypeExit, EncodeExit(3))
	big := bytes.Repeat([]byte{7}, maxRetainedPayload+1)
	stream = AppendFrame(stream, TypeData, big)

	fr := NewFrameReader(bytes.NewReader(stream))
	want := []Frame{{TypeStdout, []byte("hello")}, {TypeExitDetail, []byte(`{"exit_code":0}`)},
		{TypeExit, EncodeExit(3)}, {TypeData, big}}
	for i, w := range want {
		got, err := fr.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != w.Type || !bytes.Equal(got.Payload, w.Payload) {
			t.Errorf("frame %d: got %s with %d bytes, want %s with %d bytes", i, got.Type, len(got.Payload), w.Type, len(w.Payload))
		}
	}
	if _, err := fr.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: got %v, want io.EOF", err)
	}
}

func TestFrameReaderErrors(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"empty", nil, io.EOF},
		{"cut in the header", []byte{byte(TypeStdout), 1, 0}, io.ErrUnexpectedEOF},
		{"cut in the payload", AppendFrame(nil, TypeStdout, []byte("hello"))[:7], io.ErrUnexpectedEOF},
		{"too large", []byte{byte(TypeData), 0, 0, 0, 2}, ErrPayloadTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFrameReader(bytes.NewReader(tt.stream)).Next()
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecodeDigestChecksums(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	tests := []struct {
		name    string
		payload string
		want    Checksum
		wantErr bool
	}{
		{"sha256", `{"size":1,"sha256":"` + sha + `"}`, ChecksumSHA256, false},
		{"crc32c", `{"size":1,"crc32c":"0a0b0c0d"}`, ChecksumCRC32C, false},
		{"both", `{"size":1,"sha256":"` + sha + `","crc32c":"0a0b0c0d"}`, "", true},
		{"neither", `{"size":1}`, "", true},
		{"short crc32c", `{"size":1,"crc32c":"0a0b"}`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := DecodeDigest([]byte(tt.payload))
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err == nil {
				if got, _ := d.Checksum(); got != tt.want {
					t.Errorf("got checksum %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestRequestChecksumField(t *testing.T) {
	tests := []struct {
		name    string
		decode  func([]byte) error
		payload string
		wantErr bool
	}{
		{"WRITE_REQ without checksum", decodeWrite, `{"path":"/a","mode":0}`, false},
		{"WRITE_REQ crc32c", decodeWrite, `{"path":"/a","mode":0,"checksum":"crc32c"}`, false},
		{"WRITE_REQ unknown", decodeWrite, `{"path":"/a","mode":0,"checksum":"md5"}`, true},
		{"READ_REQ sha256", decodeRead, `{"path":"/a","digest":true,"checksum":"sha256"}`, false},
		{"READ_REQ unknown", decodeRead, `{"path":"/a","digest":true,"checksum":"md5"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.decode([]byte(tt.payload)); (err != nil) != tt.wantErr {
				t.Errorf("got error %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func decodeWrite(b []byte) error { _, err := DecodeWriteRequest(b); return err }
func decodeRead(b []byte) error  { _, err := DecodeReadRequest(b); return err }

func TestNewHashCRC32C(t *testing.T) {
	// The CRC-32C check value of "123456789" is e3069283.
	h := NewHash(ChecksumCRC32C)
	h.Write([]byte("123456789"))
	if got := hex.EncodeToString(h.Sum(nil)); got != "e3069283" {
		t.Errorf("got %s, want e3069283", got)
	}
}

package agentproto

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"strings"
)

// DataChunk is the DATA payload size both sides of hearth use for file
// transfers. Receivers accept any size up to MaxPayload.
const DataChunk = 1 << 20

// Checksum names the algorithm of a DIGEST (hearth addition). The empty
// value on the wire means ChecksumSHA256, which is what hearth hosts
// that predate the field expect.
type Checksum string

// Checksum algorithms.
const (
	// ChecksumCRC32C is CRC-32C (Castagnoli), which the CPU computes at
	// memory speed (SSE 4.2 on x86-64, the CRC32 instructions on arm64).
	// It detects corruption and truncation, not tampering.
	ChecksumCRC32C Checksum = "crc32c"
	// ChecksumSHA256 is SHA-256, for callers who want a cryptographic
	// digest of what they sent.
	ChecksumSHA256 Checksum = "sha256"
)

// Valid reports whether c names a known algorithm or is empty.
func (c Checksum) Valid() bool {
	return c == "" || c == ChecksumCRC32C || c == ChecksumSHA256
}

// OrDefault returns c, or ChecksumSHA256 when c is empty.
func (c Checksum) OrDefault() Checksum {
	if c == "" {
		return ChecksumSHA256
	}
	return c
}

// DefaultFileMode is the mode of a file written by a WRITE_REQ whose mode
// is 0, and DefaultDirMode that of a directory created by MKDIR with mode
// 0 or by the mkdirs option.
const (
	DefaultFileMode = 0o644
	DefaultDirMode  = 0o755
)

// WriteRequest is the JSON payload of WRITE_REQ. Path and Mode are the
// reference fields; the others are hearth additions that a reference
// host never sets.
type WriteRequest struct {
	Path string `json:"path"`
	// Mode holds the permission bits, setuid, setgid and sticky
	// included (07777); 0 means DefaultFileMode.
	Mode uint32 `json:"mode"`

	// UID and GID set the file's owner; nil keeps the agent's own.
	UID *uint32 `json:"uid,omitempty"`
	GID *uint32 `json:"gid,omitempty"`
	// Size is the expected byte count. The agent rejects a transfer of
	// any other length and leaves the target untouched.
	Size *int64 `json:"size,omitempty"`
	// SHA256 is the expected hex SHA-256 of the content, when the host
	// knows it before sending. A DIGEST frame before DONE serves the
	// same purpose for a host that computes it while sending.
	SHA256 string `json:"sha256,omitempty"`
	// Mkdirs creates missing parent directories with DefaultDirMode.
	Mkdirs bool `json:"mkdirs,omitempty"`
	// Checksum is the algorithm of the DIGEST the host sends before
	// DONE; empty means ChecksumSHA256.
	Checksum Checksum `json:"checksum,omitempty"`
}

// ReadRequest is the JSON payload of READ_REQ.
type ReadRequest struct {
	Path string `json:"path"`
	// Digest asks the agent to send DIGEST after DONE (hearth addition).
	Digest bool `json:"digest,omitempty"`
	// Checksum is the algorithm of that DIGEST; empty means
	// ChecksumSHA256 (hearth addition). The agent hashes the content
	// only when Digest is set.
	Checksum Checksum `json:"checksum,omitempty"`
}

// Digest is the JSON payload of DIGEST: the length of the bytes of one
// transfer and exactly one checksum of them, in lower-case hex.
type Digest struct {
	Size int64 `json:"size"`
	// SHA256 is the SHA-256, 64 hex digits.
	SHA256 string `json:"sha256,omitempty"`
	// CRC32C is the CRC-32C as a big-endian u32, 8 hex digits.
	CRC32C string `json:"crc32c,omitempty"`
}

// Checksum returns the algorithm and the hex sum that d carries.
func (d Digest) Checksum() (Checksum, string) {
	if d.CRC32C != "" {
		return ChecksumCRC32C, d.CRC32C
	}
	return ChecksumSHA256, d.SHA256
}

// NewDigest returns the Digest of size bytes whose checksum c is the hex
// string sum.
func NewDigest(size int64, c Checksum, sum string) Digest {
	if c == ChecksumCRC32C {
		return Digest{Size: size, CRC32C: sum}
	}
	return Digest{Size: size, SHA256: sum}
}

// NewHash returns a hash computing c (SHA-256 when c is empty).
func NewHash(c Checksum) hash.Hash {
	if c == ChecksumCRC32C {
		return crc32.New(castagnoli)
	}
	return sha256.New()
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// PathRequest is the JSON payload of STAT and LIST.
type PathRequest struct {
	Path string `json:"path"`
}

// MkdirRequest is the JSON payload of MKDIR.
type MkdirRequest struct {
	Path string `json:"path"`
	// Mode holds the permission bits (07777); 0 means DefaultDirMode.
	Mode uint32 `json:"mode,omitempty"`
	// Parents creates missing parents and accepts an existing
	// directory, like mkdir -p.
	Parents bool `json:"parents,omitempty"`
}

// RemoveRequest is the JSON payload of REMOVE.
type RemoveRequest struct {
	Path string `json:"path"`
	// Recursive removes a directory with everything in it. Without it
	// only a file, a symbolic link or an empty directory is removed.
	Recursive bool `json:"recursive,omitempty"`
}

// RenameRequest is the JSON payload of RENAME. The target is replaced
// if it exists, as rename(2) does.
type RenameRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// File types of FileInfo.Type.
const (
	FileTypeRegular   = "file"
	FileTypeDir       = "dir"
	FileTypeSymlink   = "symlink"
	FileTypeFIFO      = "fifo"
	FileTypeSocket    = "socket"
	FileTypeCharDev   = "char"
	FileTypeBlockDev  = "block"
	FileTypeIrregular = "other"
)

// FileInfo is the JSON payload of FILE_INFO and an element of
// LIST_ENTRIES. It describes the path itself; a symbolic link is not
// followed.
type FileInfo struct {
	// Name is the base name for LIST entries and the requested path for
	// STAT.
	Name string `json:"name"`
	Type string `json:"type"`
	// Mode holds the permission bits, setuid, setgid and sticky
	// included (07777).
	Mode uint32 `json:"mode"`
	Size int64  `json:"size"`
	// MtimeNanos is the modification time in Unix nanoseconds.
	MtimeNanos int64  `json:"mtime_ns"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	// Target is a symbolic link's target, empty for other types.
	Target string `json:"target,omitempty"`
}

// DecodeWriteRequest parses and validates a WRITE_REQ payload.
func DecodeWriteRequest(payload []byte) (WriteRequest, error) {
	var req WriteRequest
	if err := decodeJSON("WRITE_REQ", payload, &req); err != nil {
		return WriteRequest{}, err
	}
	if err := checkPath("WRITE_REQ", req.Path); err != nil {
		return WriteRequest{}, err
	}
	if req.Mode&^0o7777 != 0 {
		return WriteRequest{}, fmt.Errorf("invalid WRITE_REQ payload: mode %#o has bits outside 07777", req.Mode)
	}
	if req.Size != nil && *req.Size < 0 {
		return WriteRequest{}, fmt.Errorf("invalid WRITE_REQ payload: size %d is negative", *req.Size)
	}
	if req.SHA256 != "" {
		if err := checkSHA256("WRITE_REQ", req.SHA256); err != nil {
			return WriteRequest{}, err
		}
	}
	if err := checkChecksum("WRITE_REQ", req.Checksum); err != nil {
		return WriteRequest{}, err
	}
	return req, nil
}

// DecodeReadRequest parses and validates a READ_REQ payload.
func DecodeReadRequest(payload []byte) (ReadRequest, error) {
	var req ReadRequest
	if err := decodeJSON("READ_REQ", payload, &req); err != nil {
		return ReadRequest{}, err
	}
	if err := checkChecksum("READ_REQ", req.Checksum); err != nil {
		return ReadRequest{}, err
	}
	return req, checkPath("READ_REQ", req.Path)
}

// DecodeDigest parses and validates a DIGEST payload.
func DecodeDigest(payload []byte) (Digest, error) {
	var d Digest
	if err := decodeJSON("DIGEST", payload, &d); err != nil {
		return Digest{}, err
	}
	if d.Size < 0 {
		return Digest{}, fmt.Errorf("invalid DIGEST payload: size %d is negative", d.Size)
	}
	switch {
	case d.SHA256 != "" && d.CRC32C != "":
		return Digest{}, errors.New("invalid DIGEST payload: both sha256 and crc32c are set; want one")
	case d.CRC32C != "":
		return d, checkCRC32C("DIGEST", d.CRC32C)
	default:
		return d, checkSHA256("DIGEST", d.SHA256)
	}
}

// DecodePathRequest parses and validates the payload of STAT or LIST,
// named by t in errors.
func DecodePathRequest(t FrameType, payload []byte) (PathRequest, error) {
	var req PathRequest
	if err := decodeJSON(t.String(), payload, &req); err != nil {
		return PathRequest{}, err
	}
	return req, checkPath(t.String(), req.Path)
}

// DecodeMkdirRequest parses and validates a MKDIR payload.
func DecodeMkdirRequest(payload []byte) (MkdirRequest, error) {
	var req MkdirRequest
	if err := decodeJSON("MKDIR", payload, &req); err != nil {
		return MkdirRequest{}, err
	}
	if req.Mode&^0o7777 != 0 {
		return MkdirRequest{}, fmt.Errorf("invalid MKDIR payload: mode %#o has bits outside 07777", req.Mode)
	}
	return req, checkPath("MKDIR", req.Path)
}

// DecodeRemoveRequest parses and validates a REMOVE payload.
func DecodeRemoveRequest(payload []byte) (RemoveRequest, error) {
	var req RemoveRequest
	if err := decodeJSON("REMOVE", payload, &req); err != nil {
		return RemoveRequest{}, err
	}
	return req, checkPath("REMOVE", req.Path)
}

// DecodeRenameRequest parses and validates a RENAME payload.
func DecodeRenameRequest(payload []byte) (RenameRequest, error) {
	var req RenameRequest
	if err := decodeJSON("RENAME", payload, &req); err != nil {
		return RenameRequest{}, err
	}
	if err := checkPath("RENAME", req.From); err != nil {
		return RenameRequest{}, err
	}
	return req, checkPath("RENAME", req.To)
}

func decodeJSON(name string, payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("invalid %s payload: %w", name, err)
	}
	return nil
}

// checkPath accepts any non-empty path without NUL bytes. The agent takes
// a relative path as relative to the root directory; paths are not
// cleaned here because they are interpreted in the guest.
func checkPath(name, path string) error {
	switch {
	case path == "":
		return fmt.Errorf("invalid %s payload: path is empty", name)
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("invalid %s payload: path %q contains a NUL byte", name, path)
	}
	return nil
}

func checkChecksum(name string, c Checksum) error {
	if !c.Valid() {
		return fmt.Errorf("invalid %s payload: checksum %q is not %q or %q", name, c, ChecksumCRC32C, ChecksumSHA256)
	}
	return nil
}

func checkCRC32C(name, sum string) error {
	b, err := hex.DecodeString(sum)
	if err != nil || len(b) != 4 {
		return fmt.Errorf("invalid %s payload: crc32c %q is not 8 hex digits", name, sum)
	}
	return nil
}

func checkSHA256(name, sum string) error {
	b, err := hex.DecodeString(sum)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("invalid %s payload: sha256 %q is not 64 hex digits", name, sum)
	}
	return nil
}

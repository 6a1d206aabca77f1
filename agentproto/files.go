package agentproto

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// DataChunk is the DATA payload size both sides of hearth use for file
// transfers. Receivers accept any size up to MaxPayload.
const DataChunk = 256 << 10

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
}

// ReadRequest is the JSON payload of READ_REQ.
type ReadRequest struct {
	Path string `json:"path"`
	// Digest asks the agent to send DIGEST after DONE (hearth addition).
	Digest bool `json:"digest,omitempty"`
}

// Digest is the JSON payload of DIGEST: the length and hex SHA-256 of the
// bytes of one transfer.
type Digest struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

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
	return req, nil
}

// DecodeReadRequest parses and validates a READ_REQ payload.
func DecodeReadRequest(payload []byte) (ReadRequest, error) {
	var req ReadRequest
	if err := decodeJSON("READ_REQ", payload, &req); err != nil {
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
	return d, checkSHA256("DIGEST", d.SHA256)
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

func checkSHA256(name, sum string) error {
	b, err := hex.DecodeString(sum)
	if err != nil || len(b) != 32 {
		return fmt.Errorf("invalid %s payload: sha256 %q is not 64 hex digits", name, sum)
	}
	return nil
}

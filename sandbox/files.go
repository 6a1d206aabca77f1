package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
)

// fileError is a file operation that the guest's agent rejected. Its text
// is the agent's message (operation, path and reason); it matches
// agentclient.ErrRejected and the manager's error kind for the reason.
type fileError struct {
	kind error
	msg  string
}

func (e *fileError) Error() string   { return e.msg }
func (e *fileError) Unwrap() []error { return []error{e.kind, agentclient.ErrRejected} }

// dialFile opens a stream to the file port of the sandbox's agent. Files
// are reachable while the sandbox is ready or running.
//
// NOTE: a transfer does not count as a workload, so a checkpoint may
// start while one runs. On Firecracker the snapshot resets the vsock
// connection, and the transfer fails with the target path unchanged.
func (sb *Sandbox) dialFile(ctx context.Context) (net.Conn, error) {
	sb.mu.Lock()
	state, machine, checkpointing := sb.state, sb.machine, sb.checkpointing
	sb.mu.Unlock()
	if state != StateReady && state != StateRunning {
		return nil, fmt.Errorf("%w: sandbox %q is %s; files are reachable only in a ready or running sandbox",
			ErrWrongState, sb.id, state)
	}
	if checkpointing {
		return nil, fmt.Errorf("%w: sandbox %q is being checkpointed; retry when the checkpoint is written",
			ErrWrongState, sb.id)
	}
	if machine == nil {
		return nil, fmt.Errorf("%w: sandbox %q has no running VM", ErrWrongState, sb.id)
	}
	conn, err := machine.DialAgent(ctx, agentproto.PortFile)
	if err != nil {
		return nil, fmt.Errorf("%w: reach the file channel of sandbox %q: %v", ErrUnavailable, sb.id, err)
	}
	return conn, nil
}

// fileErr gives an error of package agentclient a kind. A rejection by
// the agent gets the kind its reason names, and a broken connection is
// ErrUnavailable. A context error or an error of the caller's reader or
// writer passes unchanged.
func (sb *Sandbox) fileErr(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	if errors.Is(err, agentclient.ErrRejected) {
		msg := strings.TrimPrefix(err.Error(), agentclient.ErrRejected.Error()+": ")
		return &fileError{kind: rejectionKind(msg), msg: fmt.Sprintf("sandbox %q: %s", sb.id, msg)}
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w: sandbox %q: %v", ErrUnavailable, sb.id, err)
	}
	return err
}

// rejectionKind maps the reason of an agent's ERR message to an error
// kind. The agent words reasons as plain strings ("not found", "already
// exists", or an errno text such as "directory not empty").
func rejectionKind(msg string) error {
	switch {
	case strings.HasSuffix(msg, ": not found") || strings.Contains(msg, "not found;"):
		return ErrNotFound
	case strings.HasSuffix(msg, ": already exists") || strings.Contains(msg, "already exists and"):
		return ErrAlreadyExists
	case strings.Contains(msg, "no space left on device"), strings.Contains(msg, "disk quota exceeded"):
		return ErrResourceExhausted
	case strings.HasPrefix(msg, "invalid "):
		return ErrInvalidArgument
	default:
		// Such as "is a directory", "directory not empty" or "permission
		// denied": the request is valid but the guest's files do not
		// allow it.
		return ErrWrongState
	}
}

// Upload streams r into the file opts.Path in the guest. The target gets
// all of r or stays as it was: an error of r, a cancelled ctx or a broken
// connection leaves no partial file. Memory use does not depend on the
// size of r.
func (sb *Sandbox) Upload(ctx context.Context, opts agentclient.WriteOptions, r io.Reader) error {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return err
	}
	return sb.fileErr(ctx, agentclient.Upload(ctx, conn, opts, r))
}

// Download streams the guest file at path into w and returns the byte
// count. The agent's size and SHA-256 are checked; an error means w may
// hold partial content.
func (sb *Sandbox) Download(ctx context.Context, path string, w io.Writer) (int64, error) {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return 0, err
	}
	n, err := agentclient.Download(ctx, conn, path, w)
	return n, sb.fileErr(ctx, err)
}

// Stat describes a guest path without following a symbolic link.
func (sb *Sandbox) Stat(ctx context.Context, path string) (agentproto.FileInfo, error) {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return agentproto.FileInfo{}, err
	}
	fi, err := agentclient.Stat(ctx, conn, path)
	return fi, sb.fileErr(ctx, err)
}

// ListFiles calls fn with each batch of entries of a guest directory, so
// a directory of any size is listed in bounded memory. An error of fn
// ends the listing and is returned.
func (sb *Sandbox) ListFiles(ctx context.Context, path string, fn func([]agentproto.FileInfo) error) error {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return err
	}
	return sb.fileErr(ctx, agentclient.ListFunc(ctx, conn, path, fn))
}

// Mkdir creates a guest directory with mode (0 means 0755); with
// parents, as mkdir -p.
func (sb *Sandbox) Mkdir(ctx context.Context, path string, mode os.FileMode, parents bool) error {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return err
	}
	return sb.fileErr(ctx, agentclient.Mkdir(ctx, conn, path, mode, parents))
}

// RemoveFile removes a guest file, symbolic link or empty directory; with
// recursive, a directory and its contents.
func (sb *Sandbox) RemoveFile(ctx context.Context, path string, recursive bool) error {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return err
	}
	return sb.fileErr(ctx, agentclient.Remove(ctx, conn, path, recursive))
}

// RenameFile renames a guest path, replacing the target as rename(2)
// does.
func (sb *Sandbox) RenameFile(ctx context.Context, from, to string) error {
	conn, err := sb.dialFile(ctx)
	if err != nil {
		return err
	}
	return sb.fileErr(ctx, agentclient.Rename(ctx, conn, from, to))
}

// Upload streams r into a file of sandbox id, as Sandbox.Upload does.
func (m *Manager) Upload(ctx context.Context, id string, opts agentclient.WriteOptions, r io.Reader) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.Upload(ctx, opts, r)
}

// Download streams a file of sandbox id into w, as Sandbox.Download does.
func (m *Manager) Download(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	sb, err := m.Get(id)
	if err != nil {
		return 0, err
	}
	return sb.Download(ctx, path, w)
}

// Stat describes a path of sandbox id, as Sandbox.Stat does.
func (m *Manager) Stat(ctx context.Context, id, path string) (agentproto.FileInfo, error) {
	sb, err := m.Get(id)
	if err != nil {
		return agentproto.FileInfo{}, err
	}
	return sb.Stat(ctx, path)
}

// ListFiles lists a directory of sandbox id, as Sandbox.ListFiles does.
func (m *Manager) ListFiles(ctx context.Context, id, path string, fn func([]agentproto.FileInfo) error) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.ListFiles(ctx, path, fn)
}

// Mkdir creates a directory in sandbox id, as Sandbox.Mkdir does.
func (m *Manager) Mkdir(ctx context.Context, id, path string, mode os.FileMode, parents bool) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.Mkdir(ctx, path, mode, parents)
}

// RemoveFile removes a path in sandbox id, as Sandbox.RemoveFile does.
func (m *Manager) RemoveFile(ctx context.Context, id, path string, recursive bool) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.RemoveFile(ctx, path, recursive)
}

// RenameFile renames a path in sandbox id, as Sandbox.RenameFile does.
func (m *Manager) RenameFile(ctx context.Context, id, from, to string) error {
	sb, err := m.Get(id)
	if err != nil {
		return err
	}
	return sb.RenameFile(ctx, from, to)
}

package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"
)

// listenUnix listens on the socket at path with the given mode and group.
// It creates the parent directory and replaces a stale socket file, but
// never one that a process still listens on.
func listenUnix(path string, mode os.FileMode, group string) (_ net.Listener, err error) {
	gid := -1
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}

	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			lis.Close()
		}
	}()
	// The socket exists with the umask's mode until these two calls;
	// connecting needs write permission, which the default umask withholds
	// from everyone but the owner.
	if err := os.Chown(path, -1, gid); err != nil {
		return nil, fmt.Errorf("set group of %s ([grpc].socket_group = %q): %w", path, group, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return nil, fmt.Errorf("set mode of %s: %w", path, err)
	}
	return lis, nil
}

// removeStaleSocket removes a socket left behind by a daemon that did not
// shut down cleanly. A socket someone still accepts on is an error, and
// so is any file that is not a socket.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; remove it or set another [grpc].unix_socket", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("another process listens on %s, probably a running hearth daemon; stop it first", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// lookupGroup returns the id of a group given by name or number.
func lookupGroup(group string) (int, error) {
	if id, err := strconv.Atoi(group); err == nil && id >= 0 {
		return id, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("invalid [grpc].socket_group = %q: %w; create the group or name an existing one", group, err)
	}
	id, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q has the non-numeric id %q", group, g.Gid)
	}
	return id, nil
}

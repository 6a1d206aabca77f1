package agent

import (
	"io/fs"
	"os"
	"path"
	"strings"
)

// fileSystem is the set of file operations the file channel uses. Paths
// are the guest paths of the requests, and a relative path is taken
// relative to the root.
type fileSystem interface {
	OpenFile(name string, flag int, perm os.FileMode) (*os.File, error)
	Lstat(name string) (fs.FileInfo, error)
	Readlink(name string) (string, error)
	Mkdir(name string, perm os.FileMode) error
	MkdirAll(name string, perm os.FileMode) error
	Chmod(name string, mode os.FileMode) error
	Remove(name string) error
	RemoveAll(name string) error
	Rename(oldname, newname string) error
	Close() error
}

// hostFS serves the whole filesystem of the machine, as the agent of a
// guest does.
type hostFS struct{}

func hostPath(name string) string { return path.Clean("/" + name) }

func (hostFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(hostPath(name), flag, perm)
}
func (hostFS) Lstat(name string) (fs.FileInfo, error)    { return os.Lstat(hostPath(name)) }
func (hostFS) Readlink(name string) (string, error)      { return os.Readlink(hostPath(name)) }
func (hostFS) Mkdir(name string, perm os.FileMode) error { return os.Mkdir(hostPath(name), perm) }
func (hostFS) MkdirAll(name string, perm os.FileMode) error {
	return os.MkdirAll(hostPath(name), perm)
}
func (hostFS) Chmod(name string, mode os.FileMode) error { return os.Chmod(hostPath(name), mode) }
func (hostFS) Remove(name string) error                  { return os.Remove(hostPath(name)) }
func (hostFS) RemoveAll(name string) error               { return os.RemoveAll(hostPath(name)) }
func (hostFS) Rename(oldname, newname string) error {
	return os.Rename(hostPath(oldname), hostPath(newname))
}
func (hostFS) Close() error { return nil }

// rootFS confines every path to one directory through os.Root, which
// rejects ".." and symbolic links that lead out of it. Guest paths are
// taken relative to that directory.
type rootFS struct {
	root *os.Root
}

func openRootFS(dir string) (rootFS, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return rootFS{}, err
	}
	return rootFS{root: root}, nil
}

// rootPath maps a guest path to a path relative to the root: "/" and ""
// become ".", "/a/b" becomes "a/b".
func rootPath(name string) string {
	rel := strings.TrimPrefix(path.Clean("/"+name), "/")
	if rel == "" {
		return "."
	}
	return rel
}

func (r rootFS) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	return r.root.OpenFile(rootPath(name), flag, perm)
}
func (r rootFS) Lstat(name string) (fs.FileInfo, error) { return r.root.Lstat(rootPath(name)) }
func (r rootFS) Readlink(name string) (string, error)   { return r.root.Readlink(rootPath(name)) }
func (r rootFS) Mkdir(name string, perm os.FileMode) error {
	return r.root.Mkdir(rootPath(name), perm)
}
func (r rootFS) MkdirAll(name string, perm os.FileMode) error {
	return r.root.MkdirAll(rootPath(name), perm)
}
func (r rootFS) Chmod(name string, mode os.FileMode) error {
	return r.root.Chmod(rootPath(name), mode)
}
func (r rootFS) Remove(name string) error    { return r.root.Remove(rootPath(name)) }
func (r rootFS) RemoveAll(name string) error { return r.root.RemoveAll(rootPath(name)) }
func (r rootFS) Rename(oldname, newname string) error {
	return r.root.Rename(rootPath(oldname), rootPath(newname))
}
func (r rootFS) Close() error { return r.root.Close() }

// fileMode converts wire mode bits (07777) to an os.FileMode.
func fileMode(bits uint32) os.FileMode {
	m := os.FileMode(bits & 0o777)
	if bits&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if bits&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if bits&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// modeBits converts an os.FileMode to wire mode bits (07777).
func modeBits(m os.FileMode) uint32 {
	bits := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

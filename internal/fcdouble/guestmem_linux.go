package fcdouble

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The double's guest keeps its whole root file system on tmpfs, that is
// in guest RAM. A snapshot therefore models guest memory as a tar archive
// of that tmpfs at the start of the memory file (the rest stays a hole),
// and a load unpacks it into the new guest's root before the guest runs.
// A file the guest wrote before the snapshot is thus present after a
// restore. Processes other than the agent, open descriptors and the
// agent's own state are not carried over: the restored guest is a new
// agent process.

// guestRootWait bounds the wait for a loaded guest's agent to listen,
// after which its root is set up.
const guestRootWait = 10 * time.Second

// root returns the host path of the guest's root directory, after
// checking that the path leads to the guest. It does not when the double
// runs in a PID namespace of its own (the jailer's --new-pid-ns), because
// /proc then lists another process under the guest's PID.
func (g *guest) root() (string, error) {
	root := fmt.Sprintf("/proc/%d/root", g.pid)
	inGuest, err := os.Stat(filepath.Join(root, "run", "hearth"))
	if err != nil {
		return "", fmt.Errorf("guest root %s: %w", root, err)
	}
	onHost, err := os.Stat(filepath.Join(g.dir, "sock"))
	if err != nil {
		return "", fmt.Errorf("guest socket directory: %w", err)
	}
	if !os.SameFile(inGuest, onHost) {
		return "", fmt.Errorf("%s is not the guest's root (is the double in a PID namespace of its own?)", root)
	}
	return root, nil
}

// saveGuestMemory writes the archive of the guest's tmpfs root to the
// start of mem, which must hold at most size bytes of it.
func saveGuestMemory(g *guest, mem *os.File, size int64) error {
	if g == nil {
		return nil
	}
	root, err := g.root()
	if err != nil {
		return err
	}
	var rootSt syscall.Stat_t
	if err := syscall.Stat(root, &rootSt); err != nil {
		return err
	}
	w := &limitWriter{w: io.NewOffsetWriter(mem, 0), left: size}
	tw := tar.NewWriter(w)
	// The trailing slash makes WalkDir follow /proc/PID/root, which is
	// a link, into the guest's root.
	err = filepath.WalkDir(root+"/", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		// Mount points (proc, the bound agent, busybox and socket
		// directory) are not the tmpfs, and device nodes are made anew.
		if fi.Sys().(*syscall.Stat_t).Dev != rootSt.Dev || !(fi.IsDir() || fi.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0) {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("save guest memory: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("save guest memory: %w", err)
	}
	return nil
}

// limitWriter fails writes past left bytes.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, errors.New("the guest's files do not fit in its memory size")
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// loadGuestMemory waits until the new guest's root is set up and unpacks
// the archive at the start of the memory file into it. A memory file
// without an archive (all holes) loads nothing.
func loadGuestMemory(g *guest, memPath string) error {
	f, err := os.Open(memPath)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := waitGuestSocket(g); err != nil {
		return err
	}
	root, err := g.root()
	if err != nil {
		return err
	}
	tr := tar.NewReader(io.NewSectionReader(f, 0, fi.Size()))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read guest memory: %w", err)
		}
		if !filepath.IsLocal(hdr.Name) {
			return fmt.Errorf("read guest memory: entry %q escapes the root", hdr.Name)
		}
		if err := restoreEntry(root, hdr, tr); err != nil {
			return fmt.Errorf("restore guest file /%s: %w", hdr.Name, err)
		}
	}
}

func restoreEntry(root string, hdr *tar.Header, r io.Reader) error {
	path := filepath.Join(root, hdr.Name)
	mode := os.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.MkdirAll(path, mode); err != nil {
			return err
		}
		if err := os.Chmod(path, mode); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if _, err := os.Lstat(path); err == nil {
			return nil // the new guest's own layout has it
		}
		if err := os.Symlink(hdr.Linkname, path); err != nil {
			return err
		}
	case tar.TypeReg:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, mode)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := os.Chmod(path, mode); err != nil {
			return err
		}
	default:
		return nil
	}
	return os.Lchown(path, hdr.Uid, hdr.Gid)
}

// waitGuestSocket waits until the guest's agent listens, which it does
// only after its root is set up.
func waitGuestSocket(g *guest) error {
	deadline := time.Now().Add(guestRootWait)
	for {
		if _, err := os.Stat(g.sockPath); err == nil {
			return nil
		}
		select {
		case <-g.exited:
			return errors.New("the guest's agent exited before it listened")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest's agent did not listen within %s", guestRootWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

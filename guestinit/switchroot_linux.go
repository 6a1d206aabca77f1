//go:build linux

package guestinit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// newRoot is the mount point of the root drive before it becomes "/".
const newRoot = "/newroot"

// movedMounts are moved from the initramfs into the new root. Their
// submounts (/dev/pts, /dev/shm) move with them.
var movedMounts = []string{"/dev", "/proc", "/sys", "/run", "/tmp"}

// switchRoot mounts dev at /newroot and makes it the root. pivot_root(2)
// rejects the initramfs (rootfs cannot be unmounted), so the new root is
// moved over "/" and entered with chroot, as switch_root(8) does.
func switchRoot(ctx context.Context, dev, fstype string) error {
	err := waitFor(ctx, rootWait, "root device "+dev, func() (bool, error) {
		_, err := os.Stat(dev)
		return err == nil, nil
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", newRoot, err)
	}
	if err := unix.Mount(dev, newRoot, fstype, 0, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, fstype, newRoot, err)
	}
	freeInitramfs()
	for _, m := range movedMounts {
		if err := moveMount(m); err != nil {
			return err
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s onto /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into %s: %w", newRoot, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir / in the new root: %w", err)
	}
	return nil
}

// moveMount moves the mount at target to the same path in the new root.
func moveMount(target string) error {
	dst := filepath.Join(newRoot, target)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("create mount point %s in the root drive: %w", dst, err)
	}
	if err := unix.Mount(target, dst, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move mount %s to %s: %w", target, dst, err)
	}
	return nil
}

// freeInitramfs deletes the initramfs files, which would otherwise keep
// their memory for the guest's lifetime. It stays on the initramfs
// filesystem, so mount points such as /newroot and /proc are left alone,
// and does nothing unless "/" is a ramfs or tmpfs. The running agent's
// binary stays mapped after its file is gone. Failures are logged only,
// because the files cost memory but break nothing.
func freeInitramfs() {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/", &sfs); err != nil {
		slog.Warn("initramfs not freed", "error", fmt.Errorf("statfs /: %w", err))
		return
	}
	if sfs.Type != unix.RAMFS_MAGIC && sfs.Type != unix.TMPFS_MAGIC {
		return
	}
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		slog.Warn("initramfs not freed", "error", fmt.Errorf("stat /: %w", err))
		return
	}
	if err := removeOnDevice("/", st.Dev); err != nil {
		slog.Warn("initramfs not fully freed", "error", err)
	}
}

// removeOnDevice removes the contents of dir that are on device dev,
// without descending into other filesystems. Directories that still hold
// something, such as mount points, are kept.
func removeOnDevice(dir string, dev uint64) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			errs = append(errs, fmt.Errorf("stat %s: %w", p, err))
			continue
		}
		if st.Dev != dev {
			continue
		}
		if e.IsDir() {
			if err := removeOnDevice(p, dev); err != nil {
				errs = append(errs, err)
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, unix.ENOTEMPTY) &&
				!errors.Is(err, unix.EBUSY) {
				errs = append(errs, err)
			}
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

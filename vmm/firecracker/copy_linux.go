package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyImage makes dst a private copy of src: a reflink (FICLONE) where
// the filesystem shares extents, else a sparse-aware copy that copies
// only the data ranges (SEEK_DATA/SEEK_HOLE, copy_file_range), so holes
// stay holes. dst must not exist.
func copyImage(src, dst string, mode os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("copy image: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy image to %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	if err := sparseCopy(in, out); err != nil {
		return fmt.Errorf("copy image %s to %s: %w", src, dst, err)
	}
	return nil
}

func sparseCopy(in, out *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func copyRange(in, out *os.File, off, n int64) error {
	inOff, outOff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(int(in.Fd()), &inOff, int(out.Fd()), &outOff, int(n), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
			return copyRangeRead(in, out, inOff, outOff, n)
		}
		if err != nil {
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		n -= int64(c)
	}
	return nil
}

func copyRangeRead(in, out *os.File, inOff, outOff, n int64) error {
	_, err := io.Copy(io.NewOffsetWriter(out, outOff), io.NewSectionReader(in, inOff, n))
	return err
}

// linkOrCopy places src at dst: a hard link when both are on the same
// filesystem, else a sparse-aware copy.
func linkOrCopy(src, dst string, mode os.FileMode) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if !errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("link %s into %s: %w", src, dst, err)
	}
	return copyImage(src, dst, mode)
}

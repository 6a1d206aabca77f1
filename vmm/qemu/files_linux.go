package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// newGuestMemory returns an anonymous memfd of mib MiB for a guest's
// RAM. It has no path, so it cannot outlive both QEMU and the driver, and
// it is not limited by the size of /dev/shm. Its pages count as shared
// memory (Shmem) of whoever touches them.
func newGuestMemory(id string, mib int) (*os.File, error) {
	fd, err := unix.MemfdCreate("hearth-mem-"+id, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create guest memory file: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:hearth-mem-"+id)
	if err := f.Truncate(int64(mib) << 20); err != nil {
		f.Close()
		return nil, fmt.Errorf("size guest memory file to %d MiB: %w", mib, err)
	}
	return f, nil
}

// copyChunk is the buffer size of the read/write fallback of copyFile.
const copyChunk = 1 << 20

// copyFile copies src into a new file at dst (created with O_EXCL, mode
// 0600) and keeps src's holes. With reflink set it first tries FICLONE,
// which shares the blocks on filesystems that support it (btrfs, XFS).
// Otherwise it copies each data range (found with SEEK_DATA and
// SEEK_HOLE) with copy_file_range, or with read and write where the
// kernel refuses that (different filesystems); the read/write path also
// leaves all-zero chunks as holes. On error dst is removed.
func copyFile(src *os.File, dst string, reflink bool) (err error) {
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("copy %s: %w", src.Name(), err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src.Name(), err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy %s to %s: %w", src.Name(), dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	if reflink && unix.IoctlFileClone(int(out.Fd()), int(src.Fd())) == nil {
		return nil
	}
	if err := copyData(src, out, st.Size()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src.Name(), dst, err)
	}
	if err := out.Truncate(st.Size()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src.Name(), dst, err)
	}
	return nil
}

// copyData copies the data ranges of src's first size bytes to the same
// offsets in dst.
func copyData(src, dst *os.File, size int64) error {
	inKernel := true
	buf := []byte(nil)
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		end, err := unix.Seek(int(src.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)

		if inKernel {
			err := copyRangeInKernel(src, dst, start, end)
			if err == nil {
				off = end
				continue
			}
			if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) &&
				!errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) {
				return err
			}
			inKernel = false
		}
		if buf == nil {
			buf = make([]byte, copyChunk)
		}
		if err := copyRangeBuffered(src, dst, start, end, buf); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyRangeInKernel copies [start, end) with copy_file_range. A refusal
// comes before any byte is copied, so the caller can fall back.
func copyRangeInKernel(src, dst *os.File, start, end int64) error {
	for start < end {
		in, out := start, start
		n, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(end-start), 0)
		if err != nil {
			return fmt.Errorf("copy_file_range at %d: %w", start, err)
		}
		if n == 0 {
			return fmt.Errorf("copy_file_range at %d: %w", start, io.ErrUnexpectedEOF)
		}
		start += int64(n)
	}
	return nil
}

// zeroBlock is compared against to find blocks that can stay holes.
var zeroBlock = make([]byte, holeBlock)

// holeBlock is the granularity at which the buffered copy leaves
// all-zero data as holes.
const holeBlock = 64 << 10

func copyRangeBuffered(src, dst *os.File, start, end int64, buf []byte) error {
	for start < end {
		chunk := buf[:min(int64(len(buf)), end-start)]
		n, err := src.ReadAt(chunk, start)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return fmt.Errorf("read at %d: %w", start, err)
		}
		for i := 0; i < n; i += holeBlock {
			block := chunk[i:min(i+holeBlock, n)]
			if bytes.Equal(block, zeroBlock[:len(block)]) {
				continue
			}
			if _, err := dst.WriteAt(block, start+int64(i)); err != nil {
				return fmt.Errorf("write at %d: %w", start+int64(i), err)
			}
		}
		start += int64(n)
	}
	return nil
}

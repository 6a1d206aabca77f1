package firecracker

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkPrivateDisk measures what every create pays for its private
// writable disk on Firecracker: a reflink where the filesystem supports
// it, else a copy that keeps the image's holes. It uses the built root
// image when present, else a sparse 128 MiB stand-in with 8 MiB of data.
func BenchmarkPrivateDisk(b *testing.B) {
	image := benchImage(b)
	dir := b.TempDir()
	b.ResetTimer()
	for b.Loop() {
		path := filepath.Join(dir, "root.ext4")
		if err := copyImage(image, path, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(path)
		b.StartTimer()
	}
}

func benchImage(b *testing.B) string {
	dir := os.Getenv("HEARTH_ASSETS")
	if dir == "" {
		dir = "/var/lib/hearth/assets"
	}
	path := filepath.Join(dir, "rootfs.ext4")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	path = filepath.Join(b.TempDir(), "image.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(128 << 20); err != nil {
		b.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 8<<20), 0); err != nil {
		b.Fatal(err)
	}
	return path
}

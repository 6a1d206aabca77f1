package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkPrivateDisk measures what every create pays for its private
// writable disk: one qcow2 overlay on the shared raw image. It uses the
// built root image when present, else a sparse 128 MiB stand-in.
func BenchmarkPrivateDisk(b *testing.B) {
	d, err := New(Config{Accel: AccelTCG})
	if err != nil {
		b.Skip(err)
	}
	image := benchImage(b)
	dir := b.TempDir()
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		path := filepath.Join(dir, "root.qcow2")
		if err := d.createOverlay(ctx, image, "raw", path); err != nil {
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
	if path := filepath.Join(dir, "rootfs.ext4"); fileExists(path) {
		return path
	}
	path := filepath.Join(b.TempDir(), "image.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(128 << 20); err != nil {
		b.Fatal(err)
	}
	return path
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

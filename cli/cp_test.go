package cli

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The instant driver's agent serves the host's filesystem, so the guest
// paths of these tests are paths under t.TempDir().

func writeRandom(t *testing.T, path string, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	return data
}

func assertFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("read %s: %v", path, err)
		return
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d bytes, want the %d copied", path, len(got), len(want))
	}
}

func TestCopyFile(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")
	local, guest := t.TempDir(), t.TempDir()
	data := writeRandom(t, filepath.Join(local, "blob"), 1<<20+5)

	mustHearth(t, host, "cp", filepath.Join(local, "blob"), "box:"+filepath.Join(guest, "copy"))
	assertFile(t, filepath.Join(guest, "copy"), data)
	if fi, err := os.Stat(filepath.Join(guest, "copy")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("uploaded mode: got %v (%v), want 0640", fi.Mode(), err)
	}

	// Into an existing directory, under the source's name.
	mustHearth(t, host, "cp", filepath.Join(local, "blob"), "box:"+guest)
	assertFile(t, filepath.Join(guest, "blob"), data)

	back := t.TempDir()
	mustHearth(t, host, "cp", "box:"+filepath.Join(guest, "copy"), filepath.Join(back, "down"))
	assertFile(t, filepath.Join(back, "down"), data)
	mustHearth(t, host, "cp", "box:"+filepath.Join(guest, "copy"), back)
	assertFile(t, filepath.Join(back, "copy"), data)

	entries, _ := os.ReadDir(back)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".hearth-cp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestCopyDirectoryRoundTrip(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")
	src := filepath.Join(t.TempDir(), "tree")
	files := map[string][]byte{}
	for _, rel := range []string{"a", "sub/b", "sub/deeper/c", "empty-file"} {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		n := 1000
		if rel == "empty-file" {
			n = 0
		}
		files[rel] = writeRandom(t, p, n)
	}
	if err := os.Mkdir(filepath.Join(src, "empty-dir"), 0o700); err != nil {
		t.Fatal(err)
	}

	guest := filepath.Join(t.TempDir(), "up")
	mustHearth(t, host, "cp", src, "box:"+guest)
	for rel, data := range files {
		assertFile(t, filepath.Join(guest, rel), data)
	}
	if fi, err := os.Stat(filepath.Join(guest, "empty-dir")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("empty directory in the guest: got %v, %v; want a directory with mode 0700", fi, err)
	}

	back := t.TempDir()
	mustHearth(t, host, "cp", "box:"+guest, back)
	for rel, data := range files {
		assertFile(t, filepath.Join(back, "up", rel), data)
	}
	if fi, err := os.Stat(filepath.Join(back, "up", "empty-dir")); err != nil || !fi.IsDir() {
		t.Errorf("empty directory after download: got %v, %v; want a directory", fi, err)
	}
}

func TestCopyTarStreams(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")
	guest := t.TempDir()
	if err := os.MkdirAll(filepath.Join(guest, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := writeRandom(t, filepath.Join(guest, "d", "e", "f"), 3000)
	if err := os.Symlink("e/f", filepath.Join(guest, "d", "link")); err != nil {
		t.Fatal(err)
	}

	out := mustHearth(t, host, "cp", "box:"+filepath.Join(guest, "d"), "-")
	tr := tar.NewReader(strings.NewReader(out))
	got := map[string]byte{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read tar output: %v", err)
		}
		got[hdr.Name] = hdr.Typeflag
		if hdr.Name == "d/e/f" {
			content, _ := io.ReadAll(tr)
			if !bytes.Equal(content, data) {
				t.Errorf("tar entry d/e/f: got %d bytes, want %d", len(content), len(data))
			}
		}
	}
	for name, typ := range map[string]byte{"d/": tar.TypeDir, "d/e/": tar.TypeDir, "d/e/f": tar.TypeReg, "d/link": tar.TypeSymlink} {
		if got[name] != typ {
			t.Errorf("tar entry %s: got type %q, want %q (entries %v)", name, got[name], typ, got)
		}
	}

	target := t.TempDir()
	res := hearth(t, host, out, "cp", "-", "box:"+target)
	if res.code != 0 {
		t.Fatalf("cp - box:DIR: exit %d, stderr %q", res.code, res.stderr)
	}
	assertFile(t, filepath.Join(target, "d", "e", "f"), data)
	if !strings.Contains(res.stderr, "skipped link d/link") {
		t.Errorf("cp - with a symbolic link: got stderr %q, want a warning about the skipped link", res.stderr)
	}
	if _, err := os.Lstat(filepath.Join(target, "d", "link")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("symbolic link from the tar archive: got %v, want it skipped", err)
	}
}

func TestCopyErrors(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	writeRandom(t, file, 10)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"both local", []string{file, filepath.Join(dir, "x")}, "neither SRC nor DST names a sandbox"},
		{"both guest", []string{"box:/a", "box:/b"}, "both SRC and DST name a sandbox"},
		{"missing local source", []string{filepath.Join(dir, "missing"), "box:" + dir}, "no such file"},
		{"missing guest source", []string{"box:" + filepath.Join(dir, "missing"), dir}, "not found in the sandbox"},
		{"unknown sandbox", []string{file, "nobody:/tmp"}, `sandbox "nobody"`},
		{"missing guest directory", []string{file, "box:" + filepath.Join(dir, "no") + "/"}, "directory not found in the sandbox"},
		{"directory onto a file", []string{dir, "box:" + file}, "not a directory"},
		{"empty guest path", []string{file, "box:"}, "give a path after the colon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := hearth(t, host, "", append([]string{"cp"}, tc.args...)...)
			if res.code != exitUsage || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("cp %v: got exit %d stderr %q, want %d and %q", tc.args, res.code, res.stderr, exitUsage, tc.want)
			}
		})
	}
}

func TestParseCopyArg(t *testing.T) {
	for _, tc := range []struct {
		arg       string
		wantGuest bool
		wantID    string
		wantPath  string
	}{
		{"box:/root/x", true, "box", "/root/x"},
		{"box:root/x", true, "box", "/root/x"},
		{"./a:b", false, "", ""},
		{"/abs/path", false, "", ""},
		{"-", false, "", ""},
		{"relative", false, "", ""},
	} {
		t.Run(tc.arg, func(t *testing.T) {
			g, ok, err := parseCopyArg(tc.arg)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.wantGuest || g.id != tc.wantID || g.path != tc.wantPath {
				t.Errorf("got guest %v id %q path %q, want %v %q %q", ok, g.id, g.path, tc.wantGuest, tc.wantID, tc.wantPath)
			}
		})
	}
}

func TestCopyTarWithoutDirectoryEntries(t *testing.T) {
	host := testDaemon(t)
	mustHearth(t, host, "create", "--id", "box", "--network", "none", "--wait")

	// tar cf - a/b/file writes no entries for a/ and a/b/.
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	content := []byte("nested\n")
	if err := tw.WriteHeader(&tar.Header{Name: "a/b/file", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	target := t.TempDir()
	res := hearth(t, host, archive.String(), "cp", "-", "box:"+target)
	if res.code != 0 {
		t.Fatalf("cp - box:DIR: exit %d, stderr %q", res.code, res.stderr)
	}
	assertFile(t, filepath.Join(target, "a", "b", "file"), content)
}

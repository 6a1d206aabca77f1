package cli

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
)

// copyChunk is the size of the chunks an upload sends, the agent's DATA
// chunk size.
const copyChunk = 256 << 10

// progressThreshold is the transfer size from which a progress bar is
// shown on a terminal.
const progressThreshold = 4 << 20

func newCopyCommand(g *globalOptions) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "cp [flags] SRC DST",
		Short: "Copy files and directories between this host and a sandbox",
		Long: `Copy a file or a directory between this host and a sandbox. ID:PATH names
a path in sandbox ID, and exactly one of SRC and DST must be one; a
relative guest path is taken from the guest's root directory.

A file is copied to DST, or into DST when DST is a directory. A directory
is copied to DST when DST does not exist, or into DST when it does; with
SRC ending in "/." its contents are copied into DST. "-" as SRC reads a
tar archive from standard input and unpacks it into the guest directory
DST; "-" as DST writes the guest path SRC to standard output as a tar
archive.

Each file reaches its target whole or not at all: a copy that fails or is
interrupted leaves no partial file at the target path, though a directory
copy may stop after some of its files. Symbolic links are created on
download and skipped, with a warning, on upload. A progress bar is shown
on a terminal for transfers of 4 MiB and more. Errors exit with 125.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			cmd.SetContext(ctx)
			return withClient(cmd, g, func(ctx context.Context, c *daemonClient) error {
				cp := &copier{
					files:  sandboxv1.NewSandboxFileServiceClient(c.conn),
					std:    stdioOf(cmd),
					quiet:  quiet,
					warned: map[string]bool{},
				}
				return cp.run(ctx, args[0], args[1])
			})
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "show no progress bar")
	return cmd
}

// guestPath is an ID:PATH argument.
type guestPath struct {
	id, path string
}

// parseCopyArg returns the guest side of arg, or ok false for a local
// path. A colon counts only before the first slash, so ./a:b is local.
func parseCopyArg(arg string) (g guestPath, ok bool, err error) {
	id, p, found := strings.Cut(arg, ":")
	if !found || id == "" || strings.Contains(id, "/") {
		return guestPath{}, false, nil
	}
	if p == "" {
		return guestPath{}, false, fmt.Errorf("invalid guest path %q: give a path after the colon, such as %s:/root", arg, id)
	}
	if !path.IsAbs(p) {
		p = "/" + p
	}
	return guestPath{id: id, path: p}, true, nil
}

// copier carries out one hearth cp.
type copier struct {
	files sandboxv1.SandboxFileServiceClient
	std   stdio
	quiet bool
	// bar is the progress bar of the transfer, or nil.
	bar    *progressbar.ProgressBar
	warned map[string]bool
}

func (cp *copier) run(ctx context.Context, src, dst string) error {
	gsrc, srcGuest, err := parseCopyArg(src)
	if err != nil {
		return err
	}
	gdst, dstGuest, err := parseCopyArg(dst)
	if err != nil {
		return err
	}
	switch {
	case srcGuest && dstGuest:
		return errors.New("both SRC and DST name a sandbox; copy between sandboxes through this host in two steps")
	case !srcGuest && !dstGuest:
		return errors.New("neither SRC nor DST names a sandbox; write one of them as ID:PATH")
	case dstGuest && src == "-":
		return cp.uploadTar(ctx, cp.std.in, gdst)
	case dstGuest:
		return cp.upload(ctx, src, gdst)
	case dst == "-":
		return cp.downloadTar(ctx, gsrc, cp.std.out)
	default:
		return cp.download(ctx, gsrc, dst)
	}
}

// startProgress shows a progress bar of total bytes when standard error
// is a terminal, the transfer is large enough and --quiet is not set.
func (cp *copier) startProgress(total int64, what string) {
	f, ok := cp.std.errOut.(*os.File)
	if cp.quiet || total < progressThreshold || !ok || !term.IsTerminal(int(f.Fd())) {
		return
	}
	cp.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(f),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// progress returns w counting into the progress bar, if one is shown.
func (cp *copier) progress(w io.Writer) io.Writer {
	if cp.bar == nil {
		return w
	}
	return io.MultiWriter(w, cp.bar)
}

func (cp *copier) finishProgress() {
	if cp.bar != nil {
		_ = cp.bar.Finish()
	}
}

func (cp *copier) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if cp.warned[msg] {
		return
	}
	cp.warned[msg] = true
	if cp.bar != nil {
		_ = cp.bar.Clear()
	}
	fmt.Fprintln(cp.std.errOut, "hearth: warning:", msg)
}

// ---- host to guest ----

// upload copies the local file or directory src to the guest.
func (cp *copier) upload(ctx context.Context, src string, dst guestPath) error {
	info, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	target, err := cp.uploadTarget(ctx, src, info.IsDir(), dst)
	if err != nil {
		return err
	}

	if !info.IsDir() {
		if !info.Mode().IsRegular() {
			return fmt.Errorf("copy %s: not a regular file or directory", src)
		}
		cp.startProgress(info.Size(), filepath.Base(src))
		defer cp.finishProgress()
		return cp.uploadFile(ctx, src, info, guestPath{id: dst.id, path: target})
	}

	total, err := localSize(src)
	if err != nil {
		return err
	}
	cp.startProgress(total, filepath.Base(src))
	defer cp.finishProgress()
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		gp := guestPath{id: dst.id, path: path.Join(target, filepath.ToSlash(rel))}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
		switch {
		case d.IsDir():
			return cp.mkdir(ctx, gp, uint32(info.Mode().Perm()))
		case info.Mode().IsRegular():
			return cp.uploadFile(ctx, p, info, gp)
		case info.Mode()&fs.ModeSymlink != 0:
			cp.warn("skipped symbolic link %s: the sandbox file API cannot create links", p)
		default:
			cp.warn("skipped %s: only regular files, directories and symbolic links are copied", p)
		}
		return nil
	})
}

// uploadTarget returns the guest path that src is copied to, following
// the rules of cp: into an existing directory, else to dst itself.
func (cp *copier) uploadTarget(ctx context.Context, src string, srcIsDir bool, dst guestPath) (string, error) {
	fi, err := cp.stat(ctx, dst)
	if err != nil {
		return "", err
	}
	contents := srcIsDir && (strings.HasSuffix(src, "/.") || src == ".")
	switch {
	case fi == nil && strings.HasSuffix(dst.path, "/"):
		return "", fmt.Errorf("copy to %s:%s: directory not found in the sandbox; create it first, or drop the trailing slash",
			dst.id, dst.path)
	case fi == nil:
		return dst.path, nil
	case fi.GetType() == "dir" && !contents:
		return path.Join(dst.path, filepath.Base(filepath.Clean(src))), nil
	case fi.GetType() == "dir":
		return dst.path, nil
	case srcIsDir:
		return "", fmt.Errorf("copy directory %s to %s:%s: the target exists and is not a directory", src, dst.id, dst.path)
	default:
		return dst.path, nil
	}
}

func (cp *copier) uploadFile(ctx context.Context, src string, info fs.FileInfo, dst guestPath) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer f.Close()
	return cp.send(ctx, f, modeBits(info.Mode()), info.Size(), dst, false)
}

// send streams r into the guest file dst, creating missing parent
// directories when mkdirs is set. On any failure it cancels the call
// instead of closing it, so the daemon discards what it received.
func (cp *copier) send(ctx context.Context, r io.Reader, mode uint32, size int64, dst guestPath, mkdirs bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cp.files.Upload(ctx)
	if err != nil {
		return copyError(dst, fromRPC(err))
	}
	header := &sandboxv1.UploadHeader{Id: dst.id, Path: dst.path, Mode: mode, Size: &size, Mkdirs: mkdirs}
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Header{Header: header}}); err != nil {
		return copyError(dst, uploadSendError(stream, err))
	}

	sum := sha256.New()
	var sent int64
	buf := make([]byte, copyChunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			// Send encodes the message before it returns, so buf may be
			// reused for the next chunk.
			msg := &sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Chunk{Chunk: buf[:n]}}
			if err := stream.Send(msg); err != nil {
				return copyError(dst, uploadSendError(stream, err))
			}
			sum.Write(buf[:n])
			sent += int64(n)
			if cp.bar != nil {
				_ = cp.bar.Add(n)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("copy to %s:%s: read source after %d bytes: %w", dst.id, dst.path, sent, rerr)
		}
	}
	if sent != size {
		return fmt.Errorf("copy to %s:%s: the source has %d bytes, not the %d it had when the copy started; the target was left unchanged",
			dst.id, dst.path, sent, size)
	}

	digest := &sandboxv1.FileDigest{Size: sent, Sha256: hex.EncodeToString(sum.Sum(nil))}
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Digest{Digest: digest}}); err != nil {
		return copyError(dst, uploadSendError(stream, err))
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return copyError(dst, fromRPC(err))
	}
	return nil
}

// uploadSendError returns the call's status when a send failed because
// the daemon ended the call: Send returns io.EOF then.
func uploadSendError(stream interface {
	CloseAndRecv() (*sandboxv1.UploadResponse, error)
}, err error) error {
	if errors.Is(err, io.EOF) {
		if _, recvErr := stream.CloseAndRecv(); recvErr != nil {
			return fromRPC(recvErr)
		}
	}
	return fromRPC(err)
}

func (cp *copier) mkdir(ctx context.Context, dst guestPath, mode uint32) error {
	_, err := cp.files.Mkdir(ctx, &sandboxv1.MkdirRequest{Id: dst.id, Path: dst.path, Mode: mode, Parents: true})
	if err != nil {
		return copyError(dst, fromRPC(err))
	}
	return nil
}

// uploadTar unpacks the tar archive r into the guest directory dst.
func (cp *copier) uploadTar(ctx context.Context, r io.Reader, dst guestPath) error {
	fi, err := cp.stat(ctx, dst)
	if err != nil {
		return err
	}
	if fi == nil || fi.GetType() != "dir" {
		return fmt.Errorf("copy a tar archive to %s:%s: the target must be an existing directory", dst.id, dst.path)
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar archive: %w", err)
		}
		name := path.Clean("/" + hdr.Name)
		if name == "/" {
			continue
		}
		gp := guestPath{id: dst.id, path: path.Join(dst.path, name)}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = cp.mkdir(ctx, gp, uint32(hdr.Mode)&0o7777)
		case tar.TypeReg:
			// Archives often leave out directory entries, which tar(1)
			// creates as needed; so does this.
			err = cp.send(ctx, tr, uint32(hdr.Mode)&0o7777, hdr.Size, gp, true)
		case tar.TypeSymlink, tar.TypeLink:
			cp.warn("skipped link %s in the tar archive: the sandbox file API cannot create links", hdr.Name)
		default:
			cp.warn("skipped %s in the tar archive: only regular files and directories are copied", hdr.Name)
		}
		if err != nil {
			return err
		}
	}
}

// ---- guest to host ----

// guestEntry is one path of a guest tree, relative to the tree's root.
type guestEntry struct {
	rel  string
	info *sandboxv1.FileInfo
}

// walkGuest lists the guest tree at root, root first and each directory
// before its contents. Only the metadata is held in memory.
func (cp *copier) walkGuest(ctx context.Context, id, root string, rootInfo *sandboxv1.FileInfo) ([]guestEntry, error) {
	entries := []guestEntry{{rel: ".", info: rootInfo}}
	for i := 0; i < len(entries); i++ {
		e := entries[i]
		if e.info.GetType() != "dir" {
			continue
		}
		dir := path.Join(root, e.rel)
		stream, err := cp.files.List(ctx, &sandboxv1.ListFilesRequest{Id: id, Path: dir})
		if err != nil {
			return nil, copyError(guestPath{id: id, path: dir}, fromRPC(err))
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, copyError(guestPath{id: id, path: dir}, fromRPC(err))
			}
			for _, fi := range resp.GetEntries() {
				entries = append(entries, guestEntry{rel: path.Join(e.rel, fi.GetName()), info: fi})
			}
		}
	}
	return entries, nil
}

// download copies the guest path src to the local path dst.
func (cp *copier) download(ctx context.Context, src guestPath, dst string) error {
	fi, err := cp.stat(ctx, src)
	if err != nil {
		return err
	}
	if fi == nil {
		return fmt.Errorf("copy %s:%s: not found in the sandbox", src.id, src.path)
	}
	isDir := fi.GetType() == "dir"
	if !isDir && fi.GetType() != "file" {
		return fmt.Errorf("copy %s:%s: a %s; only regular files and directories are copied", src.id, src.path, fi.GetType())
	}
	target, err := downloadTarget(src, isDir, dst)
	if err != nil {
		return err
	}

	entries, err := cp.walkGuest(ctx, src.id, src.path, fi)
	if err != nil {
		return err
	}
	var total int64
	for _, e := range entries {
		if e.info.GetType() == "file" {
			total += e.info.GetSize()
		}
	}
	cp.startProgress(total, path.Base(src.path))
	defer cp.finishProgress()

	var dirs []guestEntry
	for _, e := range entries {
		local := filepath.Join(target, filepath.FromSlash(e.rel))
		gp := guestPath{id: src.id, path: path.Join(src.path, e.rel)}
		switch e.info.GetType() {
		case "dir":
			// Owner write access is needed to fill the directory, so the
			// guest's mode is applied once it is full.
			if err := os.Mkdir(local, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("copy %s:%s: %w", gp.id, gp.path, err)
			}
			dirs = append(dirs, e)
		case "file":
			if err := cp.receiveFile(ctx, gp, e.info, local); err != nil {
				return err
			}
		case "symlink":
			if err := os.Symlink(e.info.GetTarget(), local); err != nil {
				return fmt.Errorf("copy %s:%s: %w", gp.id, gp.path, err)
			}
		default:
			cp.warn("skipped %s:%s: a %s; only regular files, directories and symbolic links are copied",
				gp.id, gp.path, e.info.GetType())
		}
	}
	// Innermost first, so a read-only directory is closed after its
	// contents are in place.
	for i := len(dirs) - 1; i >= 0; i-- {
		local := filepath.Join(target, filepath.FromSlash(dirs[i].rel))
		if err := os.Chmod(local, fileMode(dirs[i].info.GetMode())); err != nil {
			return fmt.Errorf("copy to %s: %w", local, err)
		}
		mtime := time.Unix(0, dirs[i].info.GetMtimeNs())
		_ = os.Chtimes(local, mtime, mtime)
	}
	return nil
}

// downloadTarget returns the local path that the guest path src is
// copied to, following the rules of cp.
func downloadTarget(src guestPath, srcIsDir bool, dst string) (string, error) {
	info, err := os.Stat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(dst, string(filepath.Separator)):
		return "", fmt.Errorf("copy to %s: directory not found; create it first, or drop the trailing slash", dst)
	case errors.Is(err, fs.ErrNotExist):
		return dst, nil
	case err != nil:
		return "", fmt.Errorf("copy to %s: %w", dst, err)
	case info.IsDir() && srcIsDir && strings.HasSuffix(src.path, "/."):
		return dst, nil
	case info.IsDir():
		return filepath.Join(dst, path.Base(src.path)), nil
	case srcIsDir:
		return "", fmt.Errorf("copy directory %s:%s to %s: the target exists and is not a directory", src.id, src.path, dst)
	default:
		return dst, nil
	}
}

// receiveFile downloads a guest file into a temporary file next to
// local and renames it over local once its digest is checked, so local
// never holds partial content.
func (cp *copier) receiveFile(ctx context.Context, src guestPath, info *sandboxv1.FileInfo, local string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(local), ".hearth-cp-*")
	if err != nil {
		return fmt.Errorf("copy %s:%s: %w", src.id, src.path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	if err := cp.receive(ctx, src, cp.progress(tmp)); err != nil {
		return err
	}
	if err := tmp.Chmod(fileMode(info.GetMode())); err != nil {
		return fmt.Errorf("copy to %s: %w", local, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("copy to %s: %w", local, err)
	}
	mtime := time.Unix(0, info.GetMtimeNs())
	_ = os.Chtimes(tmp.Name(), mtime, mtime)
	if err := os.Rename(tmp.Name(), local); err != nil {
		return fmt.Errorf("copy to %s: %w", local, err)
	}
	return nil
}

// receive streams the guest file src into w and checks the size and
// SHA-256 of the last message against what arrived.
func (cp *copier) receive(ctx context.Context, src guestPath, w io.Writer) error {
	stream, err := cp.files.Download(ctx, &sandboxv1.DownloadRequest{Id: src.id, Path: src.path})
	if err != nil {
		return copyError(src, fromRPC(err))
	}
	sum := sha256.New()
	dst := io.MultiWriter(w, sum)
	var size int64
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("copy %s:%s: the daemon ended the download after %d bytes without a digest", src.id, src.path, size)
		}
		if err != nil {
			return copyError(src, fromRPC(err))
		}
		if d := msg.GetDigest(); d != nil {
			got := hex.EncodeToString(sum.Sum(nil))
			if d.GetSize() != size || d.GetSha256() != got {
				return fmt.Errorf("copy %s:%s: received %d bytes with SHA-256 %s, but the daemon sent %d bytes with SHA-256 %s",
					src.id, src.path, size, got, d.GetSize(), d.GetSha256())
			}
			return nil
		}
		if _, err := dst.Write(msg.GetChunk()); err != nil {
			return fmt.Errorf("copy %s:%s: %w", src.id, src.path, err)
		}
		size += int64(len(msg.GetChunk()))
	}
}

// downloadTar writes the guest path src to w as a tar archive.
func (cp *copier) downloadTar(ctx context.Context, src guestPath, w io.Writer) error {
	fi, err := cp.stat(ctx, src)
	if err != nil {
		return err
	}
	if fi == nil {
		return fmt.Errorf("copy %s:%s: not found in the sandbox", src.id, src.path)
	}
	entries, err := cp.walkGuest(ctx, src.id, src.path, fi)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	base := path.Base(src.path)
	for _, e := range entries {
		if err := cp.writeTarEntry(ctx, tw, src, path.Join(base, e.rel), e); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write tar archive: %w", err)
	}
	return nil
}

func (cp *copier) writeTarEntry(ctx context.Context, tw *tar.Writer, src guestPath, name string, e guestEntry) error {
	hdr := &tar.Header{
		Name: name, Mode: int64(e.info.GetMode()), ModTime: time.Unix(0, e.info.GetMtimeNs()),
		Uid: int(e.info.GetUid()), Gid: int(e.info.GetGid()), Format: tar.FormatPAX,
	}
	switch e.info.GetType() {
	case "dir":
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
	case "file":
		hdr.Typeflag, hdr.Size = tar.TypeReg, e.info.GetSize()
	case "symlink":
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.info.GetTarget()
	default:
		cp.warn("skipped %s:%s: a %s; only regular files, directories and symbolic links are copied",
			src.id, path.Join(src.path, e.rel), e.info.GetType())
		return nil
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar archive: %w", err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	// The tar writer rejects content longer or shorter than the header
	// declares, so a file that changed size in the guest fails the copy.
	if err := cp.receive(ctx, guestPath{id: src.id, path: path.Join(src.path, e.rel)}, tw); err != nil {
		return err
	}
	return nil
}

// ---- shared ----

// stat describes a guest path, or returns nil when it does not exist.
func (cp *copier) stat(ctx context.Context, g guestPath) (*sandboxv1.FileInfo, error) {
	fi, err := cp.files.Stat(ctx, &sandboxv1.StatRequest{Id: g.id, Path: path.Clean(g.path)})
	// A missing sandbox is NOT_FOUND as well, but only the agent's
	// message names the stat operation.
	if status.Code(err) == codes.NotFound && strings.Contains(status.Convert(err).Message(), ": stat ") {
		return nil, nil
	}
	if err != nil {
		return nil, copyError(g, fromRPC(err))
	}
	return fi, nil
}

func copyError(g guestPath, err error) error {
	return fmt.Errorf("copy %s:%s: %w", g.id, g.path, err)
}

// localSize returns the total size of the regular files under root.
func localSize(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copy %s: %w", p, err)
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
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

package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"

	"github.com/hearthvm/hearth/agentproto"
)

// This file serves the file-channel requests that hearth adds to the
// reference protocol: STAT, LIST, MKDIR, REMOVE and RENAME.

func (r *fileRequest) stat(payload []byte) {
	req, err := agentproto.DecodePathRequest(agentproto.TypeStat, payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	info, err := r.fsys.Lstat(req.Path)
	if err != nil {
		r.reject(describe("stat", req.Path, err))
		return
	}
	fi := r.fileInfo(req.Path, req.Path, info)
	b, err := json.Marshal(fi)
	if err != nil {
		r.reject(fmt.Sprintf("stat %q: encode FILE_INFO: %v", req.Path, err))
		return
	}
	_ = agentproto.WriteFrame(r.conn, agentproto.TypeFileInfo, b)
}

// fileInfo describes info, found at guest path p, under name.
func (r *fileRequest) fileInfo(name, p string, info fs.FileInfo) agentproto.FileInfo {
	fi := agentproto.FileInfo{
		Name:       name,
		Type:       fileType(info.Mode()),
		Mode:       modeBits(info.Mode()),
		Size:       info.Size(),
		MtimeNanos: info.ModTime().UnixNano(),
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		fi.UID, fi.GID = st.Uid, st.Gid
	}
	if fi.Type == agentproto.FileTypeSymlink {
		// A link removed or replaced meanwhile keeps an empty target.
		fi.Target, _ = r.fsys.Readlink(p)
	}
	return fi
}

func fileType(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return agentproto.FileTypeRegular
	case fs.ModeDir:
		return agentproto.FileTypeDir
	case fs.ModeSymlink:
		return agentproto.FileTypeSymlink
	case fs.ModeNamedPipe:
		return agentproto.FileTypeFIFO
	case fs.ModeSocket:
		return agentproto.FileTypeSocket
	case fs.ModeDevice:
		return agentproto.FileTypeBlockDev
	case fs.ModeDevice | fs.ModeCharDevice:
		return agentproto.FileTypeCharDev
	default:
		return agentproto.FileTypeIrregular
	}
}

// list streams the entries of a directory as LIST_ENTRIES frames of at
// most listBatch entries, in the order the directory returns them, then
// DONE. An entry removed while the listing runs is left out.
func (r *fileRequest) list(payload []byte) {
	req, err := agentproto.DecodePathRequest(agentproto.TypeList, payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	dir, err := r.fsys.OpenFile(req.Path, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		r.reject(describe("list", req.Path, err))
		return
	}
	defer dir.Close()

	for {
		entries, err := dir.ReadDir(listBatch)
		if len(entries) > 0 {
			if werr := r.sendEntries(req.Path, entries); werr != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.reject(describe("list", req.Path, err))
			return
		}
	}
	_ = agentproto.WriteFrame(r.conn, agentproto.TypeDone, nil)
}

func (r *fileRequest) sendEntries(dir string, entries []fs.DirEntry) error {
	batch := make([]agentproto.FileInfo, 0, len(entries))
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue
		}
		batch = append(batch, r.fileInfo(e.Name(), path.Join(dir, e.Name()), info))
	}
	b, err := json.Marshal(batch)
	if err != nil {
		return err
	}
	return agentproto.WriteFrame(r.conn, agentproto.TypeListEntries, b)
}

func (r *fileRequest) mkdir(payload []byte) {
	req, err := agentproto.DecodeMkdirRequest(payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	mode := req.Mode
	if mode == 0 {
		mode = agentproto.DefaultDirMode
	}

	if req.Parents {
		parent := path.Dir(path.Clean("/" + req.Path))
		if err := r.fsys.MkdirAll(parent, agentproto.DefaultDirMode); err != nil {
			r.reject(describe("mkdir", req.Path, fmt.Errorf("create parent %q: %w", parent, err)))
			return
		}
	}
	// os.Root.Mkdir accepts only permission bits; Chmod below sets the
	// others.
	err = r.fsys.Mkdir(req.Path, fileMode(mode).Perm())
	if errors.Is(err, fs.ErrExist) && req.Parents {
		// Like mkdir -p, an existing directory is success and keeps
		// its mode.
		if info, serr := r.fsys.Lstat(req.Path); serr == nil && info.IsDir() {
			r.ack()
			return
		}
		r.reject(fmt.Sprintf("mkdir %q: already exists and is not a directory", req.Path))
		return
	}
	if err != nil {
		r.reject(describe("mkdir", req.Path, err))
		return
	}
	// mkdir(2) applies the umask and ignores setgid and sticky, so the
	// requested mode is set afterwards.
	if err := r.fsys.Chmod(req.Path, fileMode(mode)); err != nil {
		r.reject(describe("mkdir", req.Path, fmt.Errorf("set mode %#o: %w", mode, err)))
		return
	}
	r.ack()
}

func (r *fileRequest) remove(payload []byte) {
	req, err := agentproto.DecodeRemoveRequest(payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	if path.Clean("/"+req.Path) == "/" {
		r.reject(fmt.Sprintf("remove %q: refusing to remove the root directory", req.Path))
		return
	}
	// RemoveAll reports success for a missing path, so existence is
	// checked first to tell the host.
	if _, err := r.fsys.Lstat(req.Path); err != nil {
		r.reject(describe("remove", req.Path, err))
		return
	}
	if req.Recursive {
		err = r.fsys.RemoveAll(req.Path)
	} else {
		err = r.fsys.Remove(req.Path)
	}
	if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		r.reject(fmt.Sprintf("remove %q: directory not empty; set recursive to remove it with its contents", req.Path))
		return
	}
	if err != nil {
		r.reject(describe("remove", req.Path, err))
		return
	}
	r.ack()
}

func (r *fileRequest) rename(payload []byte) {
	req, err := agentproto.DecodeRenameRequest(payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	if err := r.fsys.Rename(req.From, req.To); err != nil {
		r.reject(fmt.Sprintf("rename %q to %q: %s", req.From, req.To, plainError(err)))
		return
	}
	r.ack()
}

package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/hearthvm/hearth/agentproto"
)

// defaultPath is the PATH of a command whose START env sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultWorkingDir is the working directory of a command whose START
// request leaves working_dir empty.
const defaultWorkingDir = "/"

// command is a START request resolved to what fork and exec need.
type command struct {
	path string   // executable to run, after the PATH search
	argv []string // arguments, argv[0] as the host sent it
	env  []string
	dir  string
	cred *syscall.Credential // nil: run as the agent's own user
}

// startError is a failure to start a command: the message the host reads
// on STDERR and the exit code it gets.
type startError struct {
	code   int32
	reason string // one of the agentproto.Reason constants
	msg    string
}

// prepareCommand resolves the user, environment, working directory and
// executable of req.
func prepareCommand(req agentproto.StartRequest) (*command, *startError) {
	cmd := &command{argv: req.Cmd, dir: req.WorkingDir}
	if cmd.dir == "" {
		cmd.dir = defaultWorkingDir
	}

	home := "/root"
	if req.User != "" {
		id, err := lookupUser(req.User, passwdFile, groupFile)
		if err != nil {
			return nil, &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("run as user %q: %v", req.User, err)}
		}
		cmd.cred = &syscall.Credential{Uid: id.uid, Gid: id.gid, Groups: id.groups}
		home = id.home
	}

	env, err := buildEnv(req, home)
	if err != nil {
		return nil, &startError{ExitProtocolError, agentproto.ReasonProtocolError, err.Error()}
	}
	cmd.env = env

	if serr := checkWorkingDir(cmd.dir); serr != nil {
		return nil, serr
	}

	path, serr := lookPath(req.Cmd[0], envValue(env, "PATH"), cmd.dir)
	if serr != nil {
		return nil, serr
	}
	cmd.path = path
	return cmd, nil
}

// buildEnv returns the command's environment: PATH, HOME and, for a
// terminal, TERM, each overridden by the START env, which is added in
// sorted key order.
func buildEnv(req agentproto.StartRequest, home string) ([]string, error) {
	base := map[string]string{"PATH": defaultPath, "HOME": home}
	if req.TTY {
		base["TERM"] = "xterm"
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return nil, fmt.Errorf("invalid START payload: env entry %q is not a valid variable", k)
		}
		base[k] = v
	}

	keys := make([]string, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	env := make([]string, 0, len(keys))
	for _, k := range keys {
		env = append(env, k+"="+base[k])
	}
	return env, nil
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

func checkWorkingDir(dir string) *startError {
	info, err := os.Stat(dir)
	if err != nil {
		return &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("working directory %q: %v", dir, unwrapPathError(err))}
	}
	if !info.IsDir() {
		return &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("working directory %q: not a directory", dir)}
	}
	return nil
}

// lookPath finds file the way a POSIX shell does. A name containing a
// slash is used as given, relative to dir where the child starts. A bare
// name is searched in pathEnv. A match without execute permission is used
// only if no executable match exists, so that exec reports "permission
// denied" (126) rather than "not found" (127).
func lookPath(file, pathEnv, dir string) (string, *startError) {
	if strings.Contains(file, "/") {
		return file, nil
	}

	var nonExecutable string
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		candidate := filepath.Join(d, file)
		statPath := candidate
		if !filepath.IsAbs(statPath) {
			statPath = filepath.Join(dir, statPath)
		}
		info, err := os.Stat(statPath)
		if err != nil || info.IsDir() {
			continue
		}
		if info.Mode()&0o111 != 0 {
			return candidate, nil
		}
		if nonExecutable == "" {
			nonExecutable = candidate
		}
	}
	if nonExecutable != "" {
		return nonExecutable, nil
	}
	return "", &startError{ExitNotFound, agentproto.ReasonNotFound, fmt.Sprintf("%s: command not found", file)}
}

// forkExec starts cmd through the reaper with stdio as its descriptors
// 0, 1 and 2. With tty set, the child becomes a session leader whose
// controlling terminal is its stdin. Without it, the child gets a process
// group of its own. Either way the child's PID is its process group ID,
// which timeouts and SHUTDOWN signal.
func forkExec(r *reaper, cmd *command, stdio [3]*os.File, tty bool) (*child, *startError) {
	sys := &syscall.SysProcAttr{Credential: cmd.cred}
	if tty {
		sys.Setsid = true
		sys.Setctty = true
		sys.Ctty = 0
	} else {
		sys.Setpgid = true
	}

	// File.Fd puts each descriptor into blocking mode, which is what the
	// child expects of its stdio.
	attr := &syscall.ProcAttr{
		Dir:   cmd.dir,
		Env:   cmd.env,
		Files: []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd()},
		Sys:   sys,
	}
	c, err := r.start(func() (int, error) {
		return syscall.ForkExec(cmd.path, cmd.argv, attr)
	})
	runtime.KeepAlive(stdio)
	if err != nil {
		return nil, execError(cmd.argv[0], err)
	}
	return c, nil
}

// execError maps a fork/exec failure to the shell's exit codes: 127 when
// the file does not exist, 126 for every other reason it cannot run.
func execError(name string, err error) *startError {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOENT:
			return &startError{ExitNotFound, agentproto.ReasonNotFound, fmt.Sprintf("%s: no such file or directory", name)}
		case syscall.EACCES, syscall.EPERM:
			return &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("%s: permission denied", name)}
		case syscall.ENOEXEC:
			return &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("%s: exec format error", name)}
		}
	}
	return &startError{ExitCannotExecute, agentproto.ReasonCannotStart, fmt.Sprintf("%s: cannot execute: %v", name, err)}
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

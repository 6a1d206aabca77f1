package fcdouble

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stringList collects a repeated flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// jailerConfig is the fake jailer's command line, as the real jailer
// parses it.
type jailerConfig struct {
	id, execFile, chrootBase, netns, parentCgroup string
	uid, gid                                      uint32
	cgroupVersion                                 int
	cgroups, resourceLimits                       stringList
	daemonize, newPIDNS                           bool
	extra                                         []string
}

// JailerMain runs the fake jailer with args (without the program name)
// and returns its exit code when it does not exec.
func JailerMain(args []string) int {
	cfg, err := parseJailerArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Jailer error: %v\n", err)
		return exitGeneric
	}
	if err := runJailer(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "Jailer error: %v\n", err)
		return exitGeneric
	}
	return exitOK
}

func parseJailerArgs(args []string) (jailerConfig, error) {
	var cfg jailerConfig
	var uid, gid string
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	fs.StringVar(&cfg.id, "id", "", "jail id")
	fs.StringVar(&cfg.execFile, "exec-file", "", "firecracker binary")
	fs.StringVar(&uid, "uid", "", "uid")
	fs.StringVar(&gid, "gid", "", "gid")
	fs.StringVar(&cfg.chrootBase, "chroot-base-dir", "/srv/jailer", "chroot base directory")
	fs.StringVar(&cfg.netns, "netns", "", "network namespace path")
	fs.IntVar(&cfg.cgroupVersion, "cgroup-version", 1, "cgroup version")
	fs.Var(&cfg.cgroups, "cgroup", "cgroup file=value")
	fs.StringVar(&cfg.parentCgroup, "parent-cgroup", "", "parent cgroup")
	fs.Var(&cfg.resourceLimits, "resource-limit", "resource limit")
	fs.BoolVar(&cfg.daemonize, "daemonize", false, "daemonize")
	fs.BoolVar(&cfg.newPIDNS, "new-pid-ns", false, "new PID namespace")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.extra = fs.Args()

	if os.Geteuid() != 0 {
		return cfg, errors.New("the jailer must run as root")
	}
	for name, v := range map[string]string{"--id": cfg.id, "--exec-file": cfg.execFile, "--uid": uid, "--gid": gid} {
		if v == "" {
			return cfg, fmt.Errorf("missing argument %s", name)
		}
	}
	if !instanceIDPattern.MatchString(cfg.id) {
		return cfg, fmt.Errorf("invalid instance ID %q: 1 to 64 characters, alphanumeric or '-'", cfg.id)
	}
	for _, p := range []struct {
		s   string
		dst *uint32
	}{{uid, &cfg.uid}, {gid, &cfg.gid}} {
		n, err := strconv.ParseUint(p.s, 10, 32)
		if err != nil {
			return cfg, fmt.Errorf("invalid uid or gid %q", p.s)
		}
		*p.dst = uint32(n)
	}
	exe, err := filepath.EvalSymlinks(cfg.execFile)
	if err != nil {
		return cfg, fmt.Errorf("canonicalize exec file %q: %w", cfg.execFile, err)
	}
	if fi, err := os.Stat(exe); err != nil || !fi.Mode().IsRegular() {
		return cfg, fmt.Errorf("exec file %q is not a regular file", exe)
	}
	cfg.execFile = exe
	base, err := filepath.EvalSymlinks(cfg.chrootBase)
	if err != nil {
		return cfg, fmt.Errorf("canonicalize chroot base %q: %w", cfg.chrootBase, err)
	}
	cfg.chrootBase = base
	if cfg.cgroupVersion != 1 && cfg.cgroupVersion != 2 {
		return cfg, fmt.Errorf("invalid cgroup version %d", cfg.cgroupVersion)
	}
	for _, c := range cfg.cgroups {
		if k, v, ok := strings.Cut(c, "="); !ok || k == "" || v == "" || !strings.Contains(k, ".") {
			return cfg, fmt.Errorf("invalid cgroup argument %q: want <file>=<value>", c)
		}
	}
	if cfg.parentCgroup != "" {
		if filepath.IsAbs(cfg.parentCgroup) {
			return cfg, fmt.Errorf("invalid parent cgroup %q: must be relative", cfg.parentCgroup)
		}
		for _, part := range strings.Split(cfg.parentCgroup, "/") {
			if part == "." || part == ".." {
				return cfg, fmt.Errorf("invalid parent cgroup %q: no '.' or '..' parts", cfg.parentCgroup)
			}
		}
	}
	for _, rl := range cfg.resourceLimits {
		k, v, ok := strings.Cut(rl, "=")
		if _, err := strconv.ParseUint(v, 10, 64); !ok || err != nil || (k != "fsize" && k != "no-file") {
			return cfg, fmt.Errorf("invalid resource limit %q: want fsize=<bytes> or no-file=<n>", rl)
		}
	}
	if cfg.netns != "" {
		if _, err := os.Stat(cfg.netns); err != nil {
			return cfg, fmt.Errorf("network namespace %q: %w", cfg.netns, err)
		}
	}
	return cfg, nil
}

func runJailer(cfg jailerConfig) error {
	start := time.Now()
	name := filepath.Base(cfg.execFile)
	chroot := filepath.Join(cfg.chrootBase, name, cfg.id, "root")
	if err := os.MkdirAll(chroot, 0o755); err != nil {
		return fmt.Errorf("create chroot %s: %w", chroot, err)
	}
	dst := filepath.Join(chroot, name)
	if fi, err := os.Lstat(dst); err == nil && (fi.Mode()&os.ModeSymlink != 0 || fi.Sys().(*syscall.Stat_t).Nlink > 1) {
		return fmt.Errorf("exec file destination %s is a symlink or hard link", dst)
	}
	if err := copyFile(cfg.execFile, dst); err != nil {
		return fmt.Errorf("copy exec file to %s: %w", dst, err)
	}
	if err := os.Chown(dst, int(cfg.uid), int(cfg.gid)); err != nil {
		return err
	}
	if err := buildJailDevices(chroot, cfg.uid, cfg.gid); err != nil {
		return err
	}
	if err := setResourceLimits(cfg.resourceLimits); err != nil {
		return err
	}

	args := []string{dst, "--id", cfg.id,
		"--start-time-us", strconv.FormatInt(start.UnixMicro(), 10),
		"--start-time-cpu-us", "0", "--parent-cpu-time-us", "0"}
	args = append(args, cfg.extra...)
	// The double does not chroot or drop privileges: it tells the fake
	// firecracker where the jail is so it resolves paths against it.
	args = append(args, "--jail-root", chroot,
		"--jail-uid", strconv.Itoa(int(cfg.uid)), "--jail-gid", strconv.Itoa(int(cfg.gid)))
	pidFile := dst + ".pid"

	runtime.LockOSThread()
	if cfg.netns != "" {
		if err := joinNetns(cfg.netns); err != nil {
			return err
		}
	}
	if !cfg.daemonize && !cfg.newPIDNS {
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return err
		}
		if err := os.Chdir(chroot); err != nil {
			return err
		}
		return syscall.Exec(dst, args, []string{})
	}

	cmd := exec.Command(dst, args[1:]...)
	cmd.Dir = chroot
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: cfg.daemonize}
	if cfg.newPIDNS {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if !cfg.daemonize {
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", dst, err)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	// The child is left to be reparented, as the real jailer leaves it.
	cmd.Process.Release()
	return nil
}

func joinNetns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join network namespace %s: %w", path, err)
	}
	return nil
}

func buildJailDevices(chroot string, uid, gid uint32) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"dev", 0o755}, {"dev/net", 0o755}, {"run", 0o700}} {
		p := filepath.Join(chroot, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return err
		}
	}
	nodes := []struct {
		path         string
		major, minor uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}, {"dev/urandom", 1, 9}}
	if _, err := os.Stat("/dev/userfaultfd"); err == nil {
		nodes = append(nodes, struct {
			path         string
			major, minor uint32
		}{"dev/userfaultfd", 10, 126})
	}
	for _, n := range nodes {
		p := filepath.Join(chroot, n.path)
		// Like the real jailer, no EEXIST handling: a reused chroot fails.
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor))); err != nil {
			return fmt.Errorf("Failed to create /%s via mknod inside the jail: %w", n.path, err)
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return err
		}
	}
	return nil
}

func setResourceLimits(limits []string) error {
	noFile := uint64(2048)
	for _, rl := range limits {
		k, v, _ := strings.Cut(rl, "=")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "no-file":
			noFile = n
		case "fsize":
			if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
				return fmt.Errorf("set fsize limit: %w", err)
			}
		}
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: noFile, Max: noFile}); err != nil {
		return fmt.Errorf("set no-file limit: %w", err)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

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
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of the waits for devices that appear asynchronously.
const (
	// rootWait bounds the wait for the root drive's device node.
	rootWait = 10 * time.Second
	// portWait bounds the wait for the named virtio-serial port.
	portWait = 5 * time.Second
	// linkWait bounds the wait for the network interface.
	linkWait = 5 * time.Second
	// pollInterval is the pause between checks while waiting.
	pollInterval = 10 * time.Millisecond
)

// defaultPath is PATH for the agent and its children when the kernel
// passed none, which it never does for init.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Init performs the duties of a guest's PID 1. It mounts the kernel
// filesystems, reads /proc/cmdline, loads the requested modules and
// switches to the root drive. Then it sets the hostname, configures the
// network and resolv.conf, and for the serial transport waits for the
// agent's virtio-serial port. Each step is logged with its duration to
// stderr, which is the console. Init returns an error without touching the
// system unless the process is PID 1 and hearth_init=1 is set. It may be
// called once.
func Init(ctx context.Context) (Config, error) {
	if err := checkGuestInit(os.Getpid(), os.Getenv(initEnv)); err != nil {
		return Config{}, err
	}
	begin := time.Now()
	if err := step("mount /dev", mountDev); err != nil {
		return Config{}, err
	}
	if err := step("console", openConsole); err != nil {
		return Config{}, err
	}
	if err := step("mount", mountKernelFilesystems); err != nil {
		return Config{}, err
	}
	cfg, err := readCmdline()
	if err != nil {
		return Config{}, err
	}
	if err := configure(ctx, &cfg); err != nil {
		return Config{}, err
	}
	slog.Info("guest init done", "duration", time.Since(begin).Round(time.Microsecond))
	return cfg, nil
}

// configure runs the steps that the command line selects.
func configure(ctx context.Context, cfg *Config) error {
	if len(cfg.Modules) > 0 {
		err := step("modules", func() error { return loadModules(cfg.Modules) })
		if err != nil {
			return err
		}
	}
	if cfg.Root != "" {
		err := step("switch root", func() error { return switchRoot(ctx, cfg.Root, cfg.RootFSType) })
		if err != nil {
			return err
		}
	}
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", defaultPath)
	}
	if cfg.Hostname != "" {
		err := step("hostname", func() error { return setHostname(cfg.Hostname) })
		if err != nil {
			return err
		}
	}
	if err := step("network", func() error { return configureNetwork(ctx, cfg.Network) }); err != nil {
		return err
	}
	if len(cfg.DNS) > 0 {
		if err := step("resolv.conf", func() error { return writeResolvConf(cfg.DNS) }); err != nil {
			return err
		}
	}
	if cfg.Transport == TransportSerial {
		err := step("serial port", func() error {
			var err error
			cfg.SerialPort, err = waitSerialPort(ctx, cfg.PortName)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// step runs fn, logs its duration and names the step in its error.
func step(name string, fn func() error) error {
	start := time.Now()
	if err := fn(); err != nil {
		return fmt.Errorf("guest init: %s: %w", name, err)
	}
	slog.Info("guest init step done", "step", name, "duration", time.Since(start).Round(time.Microsecond))
	return nil
}

// mountPoint is one filesystem that init mounts.
type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// devMount comes first so that the console exists for logging.
var devMount = mountPoint{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755}

var kernelMounts = []mountPoint{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC,
		"newinstance,ptmxmode=0666,mode=0620", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
}

// mount mounts m. A target that is already a mount point (EBUSY), as
// /dev is when the kernel mounted the root itself with
// CONFIG_DEVTMPFS_MOUNT, is kept.
func (m mountPoint) mount() error {
	if err := os.MkdirAll(m.target, m.mode); err != nil {
		return fmt.Errorf("create mount point %s: %w", m.target, err)
	}
	err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	if errors.Is(err, unix.EBUSY) {
		slog.Info("already mounted", "target", m.target)
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", m.fstype, m.target, m.data, err)
	}
	return nil
}

func mountDev() error { return devMount.mount() }

func mountKernelFilesystems() error {
	for _, m := range kernelMounts {
		if err := m.mount(); err != nil {
			return err
		}
	}
	return devLinks()
}

// devLinks creates the /dev symbolic links that udev would, which shells
// use for process substitution and /dev/stdin.
func devLinks() error {
	links := [][2]string{
		{"/proc/self/fd", "/dev/fd"},
		{"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"},
		{"/proc/self/fd/2", "/dev/stderr"},
	}
	for _, l := range links {
		if err := os.Symlink(l[0], l[1]); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create symlink %s -> %s: %w", l[1], l[0], err)
		}
	}
	return nil
}

// openConsole points file descriptors 0, 1 and 2 at /dev/console when
// they are closed or /dev/null. The kernel opens the console for init
// only when the initramfs has a /dev/console node, and the Go runtime
// puts /dev/null on closed standard descriptors when it can.
func openConsole() error {
	var missing []int
	for fd := range 3 {
		if !usableStdFd(fd) {
			missing = append(missing, fd)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	console, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/console: %w", err)
	}
	defer func() {
		if console > 2 {
			unix.Close(console)
		}
	}()
	for _, fd := range missing {
		if fd == console {
			continue
		}
		if err := unix.Dup3(console, fd, 0); err != nil {
			return fmt.Errorf("duplicate /dev/console onto fd %d: %w", fd, err)
		}
	}
	return nil
}

// usableStdFd reports whether fd is open on something other than
// /dev/null (character device 1:3).
func usableStdFd(fd int) bool {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false
	}
	isNull := st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(st.Rdev) == 1 && unix.Minor(st.Rdev) == 3
	return !isNull
}

// readCmdline reads and parses /proc/cmdline and logs the unknown
// hearth.* parameters.
func readCmdline() (Config, error) {
	var cfg Config
	err := step("cmdline", func() error {
		data, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return err
		}
		var unknown []string
		cfg, unknown, err = parseCmdline(strings.TrimSpace(string(data)))
		if err != nil {
			return err
		}
		if len(unknown) > 0 {
			slog.Warn("ignoring unknown kernel command line parameters", "params", unknown)
		}
		return nil
	})
	return cfg, err
}

// waitFor calls check every pollInterval until it returns true, an error,
// ctx ends or timeout passes. awaited names the device in the error.
func waitFor(ctx context.Context, timeout time.Duration, awaited string, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, err := check()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %v waiting for %s", timeout, awaited)
			}
			return fmt.Errorf("waiting for %s: %w", awaited, ctx.Err())
		case <-tick.C:
		}
	}
}

func setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	return nil
}

// waitSerialPort waits for the virtio-serial port called name, creates
// the /dev/virtio-ports/<name> symbolic link that udev would, and returns
// the link's path.
func waitSerialPort(ctx context.Context, name string) (string, error) {
	var dev string
	awaited := fmt.Sprintf("virtio-serial port %q under /sys/class/virtio-ports", name)
	err := waitFor(ctx, portWait, awaited, func() (bool, error) {
		var err error
		dev, err = findVirtioPort("/sys/class/virtio-ports", name)
		if errors.Is(err, errPortNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		_, err = os.Stat(filepath.Join("/dev", dev))
		return err == nil, nil
	})
	if err != nil {
		return "", err
	}
	link := filepath.Join("/dev/virtio-ports", name)
	if err := os.MkdirAll("/dev/virtio-ports", 0o755); err != nil {
		return "", fmt.Errorf("create /dev/virtio-ports: %w", err)
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("replace %s: %w", link, err)
	}
	if err := os.Symlink(filepath.Join("..", dev), link); err != nil {
		return "", fmt.Errorf("create symlink %s -> ../%s: %w", link, dev, err)
	}
	slog.Info("virtio-serial port found", "name", name, "device", "/dev/"+dev, "link", link)
	return link, nil
}

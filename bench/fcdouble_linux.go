package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/vmm"
	"github.com/hearthvm/hearth/vmm/firecracker"
)

// doubleMachine is one machine on the Firecracker double, booted by the
// driver without the manager, for the measures the manager has no API
// for: file transfers and the bare transport.
type doubleMachine struct {
	machine  vmm.Machine
	dir      string
	agentPID int
}

// startDoubleMachine boots the double with its sandbox directory on
// tmpfs when /dev/shm exists, so a file the guest writes to /run/hearth
// lands in memory and disk writeback stays out of the measures.
func (e *env) startDoubleMachine(ctx context.Context, id string) (_ *doubleMachine, err error) {
	dir, assets, err := e.makeDoubleDir()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()

	driver, err := firecracker.New(fcDoubleConfig(e.agent, e.fakeFC), e.quiet)
	if err != nil {
		return nil, err
	}
	sbDir := filepath.Join(dir, "sb")
	if err := os.Mkdir(sbDir, 0o755); err != nil {
		return nil, err
	}
	bootCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := driver.Boot(bootCtx, vmm.Spec{
		ID: id, Dir: sbDir, VCPUs: 1, MemoryMiB: 256,
		Kernel: assets.Kernel, Initrd: assets.Initrd, RootImage: assets.RootFS,
	})
	if err != nil {
		return nil, fmt.Errorf("boot the Firecracker double: %w", err)
	}
	defer func() {
		if err != nil {
			m.Kill()
		}
	}()

	t := &doubleMachine{machine: m, dir: dir}
	if err := t.ping(bootCtx); err != nil {
		return nil, fmt.Errorf("reach the double's agent: %w", err)
	}
	if t.agentPID, err = agentOf(e.agent, m.PID()); err != nil {
		return nil, err
	}
	return t, nil
}

// makeDoubleDir creates the directory of one double machine, on tmpfs
// where /dev/shm exists, with placeholder boot assets in it.
func (e *env) makeDoubleDir() (string, sandbox.Defaults, error) {
	base := e.dir
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "hbench-t-")
	if err != nil {
		return "", sandbox.Defaults{}, err
	}
	// The double's guest setup, in its own namespaces, reaches its
	// files through this directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", sandbox.Defaults{}, err
	}
	assets, err := placeholderAssets(filepath.Join(dir, "assets"))
	if err != nil {
		os.RemoveAll(dir)
		return "", sandbox.Defaults{}, err
	}
	return dir, assets, nil
}

func (t *doubleMachine) close() {
	t.machine.Kill()
	os.RemoveAll(t.dir)
}

// ping dials the agent's control port and waits for the ACK of PING.
func (t *doubleMachine) ping(ctx context.Context) error {
	conn, err := t.machine.DialAgent(ctx, agentproto.PortControl)
	if err != nil {
		return err
	}
	return agentclient.Ping(ctx, conn)
}

// agentOf returns the PID of the hearth-agent process whose parent is
// the double's process vmmPID.
func agentOf(agentBin string, vmmPID int) (int, error) {
	for _, pid := range processesOf(agentBin) {
		if parentPID(pid) == vmmPID {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no hearth-agent process is a child of the Firecracker double (pid %d)", vmmPID)
}

func parentPID(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name in parentheses may contain spaces; the fields
	// after its closing parenthesis are state, then the parent's PID.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

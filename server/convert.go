package server

import (
	"math"
	"time"

	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// createOptions translates a CreateSandboxRequest. Fields hearth cannot
// honour yet are rejected by name rather than ignored, so a client never
// gets a sandbox that differs from the one it asked for.
func createOptions(req *sandboxv1.CreateSandboxRequest) (sandbox.CreateOptions, error) {
	if req.GetImage() != "" {
		return sandbox.CreateOptions{}, invalidArgument("image",
			"OCI images are not supported yet; leave image empty to boot the configured root filesystem, or name an ext4 image in rootfs")
	}
	if len(req.GetMounts()) > 0 {
		return sandbox.CreateOptions{}, invalidArgument("mounts",
			"host mounts are not supported yet; copy files in with a command instead")
	}
	if req.SshPublicKey != nil {
		return sandbox.CreateOptions{}, invalidArgument("ssh_public_key",
			"SSH access is not supported yet; run commands with Run or Exec instead")
	}
	limits := req.GetLimits()
	if limits.GetMemoryMib() > math.MaxInt32 {
		return sandbox.CreateOptions{}, invalidArgument("limits.memory_mib", "the value is too large")
	}
	if limits.GetVcpus() > math.MaxInt32 {
		return sandbox.CreateOptions{}, invalidArgument("limits.vcpus", "the value is too large")
	}
	// NOTE: kernel and rootfs are host paths chosen by the client and are
	// opened by the VMM as root, so any API client can expose a host file
	// to a guest. Restrict API access (socket group, TCP token) to trusted
	// users until these paths are confined to a configured directory.
	return sandbox.CreateOptions{
		ID:         req.GetId(),
		Labels:     req.GetLabels(),
		VCPUs:      int(limits.GetVcpus()),
		MemoryMiB:  int(limits.GetMemoryMib()),
		Kernel:     req.GetKernel(),
		RootFS:     req.GetRootfs(),
		BootArgs:   req.GetBootArgs(),
		Network:    req.GetNetwork().GetMode(),
		TTL:        time.Duration(req.GetTtlSeconds()) * time.Second,
		Cmd:        req.GetCmd(),
		Env:        req.GetEnv(),
		WorkingDir: req.GetWorkingDir(),
		User:       req.GetUser(),
	}, nil
}

// startRequest builds the agent's START payload. A terminal size over
// 65535 in either direction is rejected, since the agent protocol carries
// 16 bits.
func startRequest(cmd []string, env map[string]string, dir, user string, tty bool,
	size *sandboxv1.TerminalSize, timeoutSeconds uint32) (agentproto.StartRequest, error) {
	if len(cmd) == 0 || cmd[0] == "" {
		return agentproto.StartRequest{}, invalidArgument("cmd", "the command is empty; give the program and its arguments")
	}
	width, height, err := terminalSize(size)
	if err != nil {
		return agentproto.StartRequest{}, err
	}
	return agentproto.StartRequest{
		Cmd: cmd, Env: env, WorkingDir: dir, User: user, TTY: tty,
		TTYWidth: width, TTYHeight: height, TimeoutSeconds: timeoutSeconds,
	}, nil
}

func terminalSize(size *sandboxv1.TerminalSize) (width, height uint16, err error) {
	if size.GetWidth() > math.MaxUint16 || size.GetHeight() > math.MaxUint16 {
		return 0, 0, invalidArgument("terminal size", "width and height must be at most 65535")
	}
	return uint16(size.GetWidth()), uint16(size.GetHeight()), nil
}

// unixSeconds returns t in Unix seconds, or 0 for the zero time.
func unixSeconds(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func sandboxInfo(info sandbox.Info) *sandboxv1.SandboxInfo {
	return &sandboxv1.SandboxInfo{
		Id:     info.ID,
		State:  string(info.State),
		Labels: info.Labels,
		Limits: &sandboxv1.ResourceLimits{
			Vcpus:     uint32(info.VCPUs),
			MemoryMib: uint64(info.MemoryMiB),
		},
		Network: &sandboxv1.SandboxNetwork{
			IpAddress:  info.Network.IP,
			Gateway:    info.Network.Gateway,
			TapName:    info.Network.TAP,
			MacAddress: info.Network.MAC,
		},
		CreatedAt:    unixSeconds(info.CreatedAt),
		ReadyAt:      unixSeconds(info.ReadyAt),
		LastExitedAt: unixSeconds(info.LastExitedAt),
		LastExitCode: info.LastExitCode,
		Error:        info.Error,
		ExpiresAt:    unixSeconds(info.ExpiresAt),
		Workloads:    uint32(info.Workloads),
	}
}

func sandboxSummary(info sandbox.Info) *sandboxv1.SandboxSummary {
	return &sandboxv1.SandboxSummary{
		Id:        info.ID,
		State:     string(info.State),
		Labels:    info.Labels,
		IpAddress: info.Network.IP,
		CreatedAt: unixSeconds(info.CreatedAt),
	}
}

func sandboxEvent(ev sandbox.Event) *sandboxv1.SandboxEvent {
	return &sandboxv1.SandboxEvent{
		SandboxId:  ev.SandboxID,
		Action:     ev.Action,
		Timestamp:  ev.Time.UnixNano(),
		Attributes: ev.Attributes,
	}
}

func snapshotSummary(snap sandbox.SnapshotInfo) *sandboxv1.SnapshotSummary {
	return &sandboxv1.SnapshotSummary{
		Id:          snap.ID,
		SandboxId:   snap.SandboxID,
		Name:        snap.Name,
		Labels:      snap.Labels,
		SnapshotDir: snap.Dir,
		CreatedAt:   rfc3339(snap.CreatedAt),
	}
}

// rfc3339 formats a snapshot timestamp as the API sends it: RFC 3339 in
// UTC with the fraction of a second, so that two snapshots taken within
// one second still sort by time.
func rfc3339(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

// validState reports whether s is a state a List filter may name: the
// contract's states and hearth's paused.
func validState(s string) bool {
	switch sandbox.State(s) {
	case sandbox.StateStarting, sandbox.StateReady, sandbox.StateRunning,
		sandbox.StateStopping, sandbox.StateStopped, sandbox.StateFailed, sandbox.StatePaused:
		return true
	}
	return false
}

// validAction reports whether a is an event action an Events filter may
// name: the contract's actions and hearth's checkpointed, paused and
// resumed.
func validAction(a string) bool {
	switch a {
	case sandbox.ActionCreated, sandbox.ActionReady, sandbox.ActionRunning, sandbox.ActionIdle,
		sandbox.ActionStopping, sandbox.ActionStopped, sandbox.ActionFailed, sandbox.ActionRemoved,
		sandbox.ActionCheckpointed, sandbox.ActionPaused, sandbox.ActionResumed:
		return true
	}
	return false
}

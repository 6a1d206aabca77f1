package fcdouble

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// snapshotState is the double's state file. Like Firecracker's, it names
// the drive paths, TAP names and vsock socket exactly as they were sent.
type snapshotState struct {
	Version string                    `json:"version"`
	Machine machineState              `json:"machine"`
	Drives  map[string]map[string]any `json:"drives"`
	Ifaces  map[string]map[string]any `json:"ifaces"`
	Vsock   *snapshotVsock            `json:"vsock,omitempty"`
	MMDS    map[string]any            `json:"mmds_config,omitempty"`
}

type snapshotVsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

func (s *server) createSnapshot(m map[string]any) (int, any) {
	if s.phase == phaseNotStarted {
		return fault(msgBeforeStart)
	}
	if s.phase != phasePaused {
		return fault("Create snapshot error: the microVM must be paused first.")
	}
	st := snapshotState{Version: s.cfg.ClaimVersion.String(), Machine: s.machine,
		Drives: s.drives, Ifaces: s.ifaces, MMDS: s.mmdsConfig}
	if s.vsock != nil {
		st.Vsock = &snapshotVsock{GuestCID: s.vsock.guestCID, UDSPath: s.vsock.apiPath}
	}
	raw, _ := json.Marshal(st)

	statePath := s.cfg.hostPath(str(m, "snapshot_path"))
	memPath := s.cfg.hostPath(str(m, "mem_file_path"))
	for _, p := range []string{statePath, memPath} {
		if err := s.checkCreate(p); err != nil {
			return fault("Cannot save the microVM state: %v", err)
		}
	}
	if err := os.WriteFile(statePath, raw, 0o600); err != nil {
		return fault("Cannot save the microVM state: %v", err)
	}
	if err := s.chownForJail(statePath); err != nil {
		return fault("Cannot save the microVM state: %v", err)
	}

	f, err := os.OpenFile(memPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fault("Cannot save the memory snapshot: %v", err)
	}
	defer f.Close()
	// The memory file has the guest's memory size. It starts with the
	// archive of the guest's tmpfs root (see saveGuestMemory), and the
	// rest is a hole.
	size := s.machine.MemSizeMiB << 20
	if err := f.Truncate(0); err != nil {
		return fault("Cannot save the memory snapshot: %v", err)
	}
	if err := saveGuestMemory(s.currentGuest(), f, size); err != nil {
		return fault("Cannot save the memory snapshot: %v", err)
	}
	if err := f.Truncate(size); err != nil {
		return fault("Cannot save the memory snapshot: %v", err)
	}
	if err := s.chownForJail(memPath); err != nil {
		return fault("Cannot save the memory snapshot: %v", err)
	}
	// Creating a snapshot resets the vsock transport.
	if s.vsock != nil {
		s.vsock.dropConnections()
	}
	return http.StatusNoContent, nil
}

func (s *server) loadSnapshot(m map[string]any) (int, any) {
	if s.phase != phaseNotStarted {
		return fault(msgAfterStart)
	}
	if s.bootConfigured {
		return fault(msgLoadNotFresh)
	}
	if s.loadTried {
		return fault("Loading a microVM snapshot is allowed only once per process.")
	}
	s.loadTried = true
	status, answer := s.load(m)
	if status >= 300 {
		// A failed load leaves Firecracker in a fatal state, so the process
		// ends right after sending the response.
		s.fatal = true
		go func() {
			time.Sleep(200 * time.Millisecond)
			s.exit(exitGeneric)
		}()
	}
	return status, answer
}

func (s *server) load(m map[string]any) (int, any) {
	_, hasBackend := m["mem_backend"]
	_, hasFile := m["mem_file_path"]
	switch {
	case hasBackend && hasFile:
		return fault("too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case !hasBackend && !hasFile:
		return fault("missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	memPath := str(m, "mem_file_path")
	if hasBackend {
		b := m["mem_backend"].(map[string]any)
		if str(b, "backend_type") != api.MemBackendFile {
			return fault("Load snapshot error: the double supports only the File memory backend.")
		}
		memPath = str(b, "backend_path")
	}

	raw, err := os.ReadFile(s.cfg.hostPath(str(m, "snapshot_path")))
	if err != nil {
		return fault("Load snapshot error: Cannot open the snapshot file: %v", err)
	}
	var st snapshotState
	if err := json.Unmarshal(raw, &st); err != nil {
		return fault("Load snapshot error: Cannot deserialize the microVM state: %v", err)
	}
	if st.Version != s.cfg.ClaimVersion.String() {
		return fault("Load snapshot error: snapshot written by %s cannot be loaded by %s", st.Version, s.cfg.ClaimVersion)
	}
	fi, err := os.Stat(s.cfg.hostPath(memPath))
	if err != nil {
		return fault("Load snapshot error: Cannot open the memory file: %v", err)
	}
	if fi.Size() != st.Machine.MemSizeMiB<<20 {
		return fault("Load snapshot error: memory file has %d bytes, want %d", fi.Size(), st.Machine.MemSizeMiB<<20)
	}
	for id, d := range st.Drives {
		if err := s.checkAccess(s.cfg.hostPath(str(d, "path_on_host")), !boolean(d, "is_read_only")); err != nil {
			return fault("Load snapshot error: Cannot restore drive %s: %v", id, err)
		}
	}
	if overrides, ok := m["network_overrides"].([]any); ok {
		for _, o := range overrides {
			om := o.(map[string]any)
			iface, ok := st.Ifaces[str(om, "iface_id")]
			if !ok {
				return fault("Load snapshot error: Unknown Network Device: %s", str(om, "iface_id"))
			}
			iface["host_dev_name"] = str(om, "host_dev_name")
		}
	}
	// The load opens every TAP the state names, after the overrides.
	for id, iface := range st.Ifaces {
		name := str(iface, "host_dev_name")
		if len(name) > 15 {
			return fault("Load snapshot error: Cannot restore network device %s: Open tap device failed: Invalid interface name", id)
		}
		if s.cfg.JailUID > 0 {
			if err := checkJailedTAP(name, s.cfg.JailUID, s.cfg.JailGID); err != nil {
				return fault("Load snapshot error: Cannot restore network device %s: %v", id, err)
			}
		}
	}
	if vo, ok := m["vsock_override"].(map[string]any); ok {
		if st.Vsock == nil {
			return fault("Load snapshot error: vsock_override given but the snapshot has no vsock device")
		}
		st.Vsock.UDSPath = str(vo, "uds_path")
	}
	if st.Vsock != nil {
		dev, err := s.bindVsock(st.Vsock.GuestCID, st.Vsock.UDSPath)
		if err != nil {
			return fault("Load snapshot error: Cannot restore the vsock device: %v", err)
		}
		s.vsock = dev
	}
	s.machine, s.drives, s.ifaces, s.mmdsConfig = st.Machine, st.Drives, st.Ifaces, st.MMDS
	s.machine.TrackDirtyPages = boolean(m, "track_dirty_pages") || boolean(m, "enable_diff_snapshots")
	if err := s.startGuest(); err != nil {
		return fault("Load snapshot error: %v", err)
	}
	if err := loadGuestMemory(s.currentGuest(), s.cfg.hostPath(memPath)); err != nil {
		return fault("Load snapshot error: Cannot load the guest memory: %v", err)
	}
	if boolean(m, "resume_vm") {
		s.phase = phaseRunning
	} else {
		s.setPaused(true)
		s.phase = phasePaused
	}
	return http.StatusNoContent, nil
}

// checkCreate reports whether the jailed uid and gid could create or
// overwrite the file hp: an existing file must be writable by them, and
// a new one needs a directory they may write.
func (s *server) checkCreate(hp string) error {
	if s.cfg.JailUID < 0 {
		return nil
	}
	err := s.checkAccess(hp, true)
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return s.checkAccess(filepath.Dir(hp), true)
}

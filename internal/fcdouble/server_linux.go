package fcdouble

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// Exit codes of the real binary that the double reproduces.
const (
	exitOK         = 0
	exitGeneric    = 1
	exitArgParsing = 153
	exitPanic      = 101 // Rust's exit code after a panic in main
)

const defaultMaxPayload = 51200

// Config is the double's command line.
type Config struct {
	APISock       string
	ID            string
	LogPath       string
	MetricsPath   string
	Level         string
	NoSeccomp     bool
	SeccompFilter string
	MaxPayload    int64
	MMDSSizeLimit int64

	// Double-only flags.
	ClaimVersion      api.Version
	AgentPath         string
	IgnoreCtrlAltDel  bool
	HangOnReboot      bool
	GuestBootDelay    time.Duration
	FailInstanceStart bool
	RequestLog        string
	JailRoot          string
	JailUID, JailGID  int
}

type phase int

const (
	phaseNotStarted phase = iota
	phaseRunning
	phasePaused
)

// server is one fake Firecracker process.
type server struct {
	cfg  Config
	exit func(code int) // os.Exit; replaced in tests

	mu             sync.Mutex // serialises API calls, as Firecracker does
	phase          phase
	bootConfigured bool // a boot-path resource was configured
	loadTried      bool
	fatal          bool
	loggerSet      bool
	metricsSet     bool
	machine        machineState
	boot           map[string]any
	drives         map[string]map[string]any
	ifaces         map[string]map[string]any
	vsock          *vsockDevice
	balloon        map[string]any
	mmds           map[string]any
	mmdsConfig     map[string]any
	requestLog     *os.File

	// guestMu guards the guest fields, which vsock connections read
	// without waiting for the API mutex.
	guestMu     sync.Mutex
	guestRef    *guest
	guestPaused bool
}

type machineState struct {
	VCPUCount       int64 `json:"vcpu_count"`
	MemSizeMiB      int64 `json:"mem_size_mib"`
	SMT             bool  `json:"smt"`
	TrackDirtyPages bool  `json:"track_dirty_pages"`
}

// Main runs the fake firecracker with args (without the program name)
// and returns its exit code.
func Main(args []string) int {
	if len(args) > 0 && args[0] == guestCommand {
		return guestMain(args[1:])
	}
	cfg, code := parseFlags(args)
	if code >= 0 {
		return code
	}
	s := &server{cfg: cfg, exit: os.Exit, machine: machineState{VCPUCount: 1, MemSizeMiB: 128},
		drives: map[string]map[string]any{}, ifaces: map[string]map[string]any{}}
	return s.run()
}

func parseFlags(args []string) (Config, int) {
	var cfg Config
	var claim string
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.StringVar(&cfg.APISock, "api-sock", "/run/firecracker.socket", "API socket path")
	fs.StringVar(&cfg.ID, "id", "anonymous-instance", "instance id")
	fs.StringVar(&cfg.LogPath, "log-path", "", "log file")
	fs.StringVar(&cfg.MetricsPath, "metrics-path", "", "metrics file")
	fs.StringVar(&cfg.Level, "level", "", "log level")
	fs.String("module", "", "log module filter")
	fs.Bool("show-level", false, "log the level")
	fs.Bool("show-log-origin", false, "log the origin")
	fs.BoolVar(&cfg.NoSeccomp, "no-seccomp", false, "disable seccomp")
	fs.StringVar(&cfg.SeccompFilter, "seccomp-filter", "", "custom seccomp filter")
	fs.Int64Var(&cfg.MaxPayload, "http-api-max-payload-size", defaultMaxPayload, "max API body in bytes")
	fs.Int64Var(&cfg.MMDSSizeLimit, "mmds-size-limit", 0, "max MMDS store in bytes")
	fs.Bool("boot-timer", false, "boot timer device")
	fs.Bool("enable-pci", false, "PCI transport")
	fs.Uint64("start-time-us", 0, "set by the jailer")
	fs.Uint64("start-time-cpu-us", 0, "set by the jailer")
	fs.Uint64("parent-cpu-time-us", 0, "set by the jailer")
	fs.StringVar(&claim, "claim-version", "1.16.1", "double: firecracker version to claim")
	fs.StringVar(&cfg.AgentPath, "agent", "", "double: hearth-agent binary run as the guest")
	fs.BoolVar(&cfg.IgnoreCtrlAltDel, "ignore-ctrl-alt-del", false, "double: answer SendCtrlAltDel but do nothing")
	fs.BoolVar(&cfg.HangOnReboot, "hang-on-reboot", false, "double: keep running after the guest's agent exits, as a guest whose reboot hangs")
	fs.DurationVar(&cfg.GuestBootDelay, "guest-boot-delay", 0, "double: start the agent this long after InstanceStart, as a slow guest boot")
	fs.BoolVar(&cfg.FailInstanceStart, "fail-instance-start", false, "double: reject InstanceStart")
	fs.StringVar(&cfg.RequestLog, "request-log", "", "double: append each request as a JSON line")
	fs.StringVar(&cfg.JailRoot, "jail-root", "", "double: chroot directory set by the fake jailer")
	fs.IntVar(&cfg.JailUID, "jail-uid", -1, "double: jailed uid")
	fs.IntVar(&cfg.JailGID, "jail-gid", -1, "double: jailed gid")
	if err := fs.Parse(args); err != nil {
		return cfg, exitArgParsing
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "Arguments parsing error: unexpected argument %q\n", fs.Arg(0))
		return cfg, exitArgParsing
	}
	v, err := api.ParseVersion(claim)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return cfg, exitArgParsing
	}
	cfg.ClaimVersion = v
	if cfg.NoSeccomp && cfg.SeccompFilter != "" {
		fmt.Fprintln(os.Stderr, "Arguments parsing error: Firecracker arguments '--no-seccomp' and '--seccomp-filter' are incompatible.")
		return cfg, exitArgParsing
	}
	if cfg.MMDSSizeLimit == 0 {
		cfg.MMDSSizeLimit = cfg.MaxPayload
	}
	if !instanceIDPattern.MatchString(cfg.ID) {
		fmt.Fprintf(os.Stderr, "thread 'main' panicked at src/firecracker/src/main.rs: Invalid instance ID: %q\n", cfg.ID)
		return cfg, exitPanic
	}
	if cfg.SeccompFilter != "" {
		if _, err := os.Stat(cfg.hostPath(cfg.SeccompFilter)); err != nil {
			fmt.Fprintf(os.Stderr, "Seccomp error: %v\n", err)
			return cfg, exitGeneric
		}
	}
	return cfg, -1
}

// hostPath maps a path received from the command line or the API to the
// host: under the jail root when jailed, else as given (relative to the
// working directory).
func (c Config) hostPath(p string) string {
	if c.JailRoot == "" {
		return p
	}
	return filepath.Join(c.JailRoot, filepath.Clean("/"+p))
}

func (s *server) run() int {
	if s.cfg.LogPath != "" {
		if err := s.openForJail(s.cfg.LogPath, true); err != nil {
			fmt.Fprintf(os.Stderr, "Failed to initialize the logger: %v\n", err)
			return exitGeneric
		}
		s.loggerSet = true
	}
	if s.cfg.MetricsPath != "" {
		if err := s.openForJail(s.cfg.MetricsPath, true); err != nil {
			fmt.Fprintf(os.Stderr, "Failed to initialize metrics: %v\n", err)
			return exitGeneric
		}
		s.metricsSet = true
	}
	if s.cfg.RequestLog != "" {
		f, err := os.OpenFile(s.cfg.RequestLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return exitGeneric
		}
		s.requestLog = f
	}

	sock := s.cfg.hostPath(s.cfg.APISock)
	// Firecracker binds with plain bind(): an existing file, stale or not,
	// is AddrInUse and ends the process.
	if _, err := os.Lstat(sock); err == nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at: %s. Check that it is not already used.\n", s.cfg.APISock)
		return exitGeneric
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "Failed to open the API socket at: %s: %v\n", s.cfg.APISock, err)
		return exitGeneric
	}
	ln.SetUnlinkOnClose(false)
	srv := &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	err = srv.Serve(ln)
	fmt.Fprintf(os.Stderr, "API server stopped: %v\n", err)
	return exitGeneric
}

// openForJail opens a file the way Firecracker opens its log and metrics
// files (read-write, create, no truncate) after checking the jailed user
// may.
func (s *server) openForJail(p string, write bool) error {
	hp := s.cfg.hostPath(p)
	if err := s.checkAccess(hp, write); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(hp, os.O_RDWR|os.O_CREATE|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	return s.chownForJail(hp)
}

func (s *server) chownForJail(hp string) error {
	if s.cfg.JailUID < 0 {
		return nil
	}
	return os.Chown(hp, s.cfg.JailUID, s.cfg.JailGID)
}

// checkAccess reports whether the jailed uid and gid could open hp. The
// double runs as root, so it checks the mode bits itself.
func (s *server) checkAccess(hp string, write bool) error {
	fi, err := os.Stat(hp)
	if err != nil {
		return err
	}
	if s.cfg.JailUID < 0 {
		return nil
	}
	st := fi.Sys().(*syscall.Stat_t)
	var shift uint32
	switch {
	case int(st.Uid) == s.cfg.JailUID:
		shift = 6
	case int(st.Gid) == s.cfg.JailGID:
		shift = 3
	}
	need := uint32(4)
	if write {
		need |= 2
	}
	if (st.Mode>>shift)&need != need {
		return fmt.Errorf("%s: Permission denied (os error 13)", hp)
	}
	return nil
}

type requestRecord struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

func (s *server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()

	if len(r.TransferEncoding) > 0 {
		writeHTTPError(w, http.StatusBadRequest, "Invalid header. Reason: chunked transfer encoding is not supported")
		return
	}
	if r.ContentLength > s.cfg.MaxPayload {
		writeHTTPError(w, http.StatusBadRequest, fmt.Sprintf(
			"Request payload with size %d is larger than the limit of %d allowed by server.\nAll previous unanswered requests will be dropped.",
			r.ContentLength, s.cfg.MaxPayload))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxPayload+1))
	if err != nil {
		writeHTTPError(w, http.StatusBadRequest, "Invalid request body: "+err.Error())
		return
	}
	s.record(r, body)

	if s.fatal {
		writeFault(w, http.StatusBadRequest, "The microVM is in a fatal state after a failed snapshot load.")
		return
	}
	if r.Method == http.MethodGet && len(body) > 0 {
		writeFault(w, http.StatusBadRequest, "GET request cannot have a body.")
		return
	}
	if (r.Method == http.MethodPut || r.Method == http.MethodPatch) && len(body) == 0 {
		name := map[string]string{http.MethodPut: "PUT", http.MethodPatch: "PATCH"}[r.Method]
		writeFault(w, http.StatusBadRequest, "Empty "+name+" request.")
		return
	}
	status, answer := s.route(r.Method, r.URL.Path, body)
	switch v := answer.(type) {
	case nil:
		w.WriteHeader(status)
	case faultError:
		writeFault(w, status, string(v))
	default:
		writeJSON(w, status, v)
	}
}

func (s *server) record(r *http.Request, body []byte) {
	if s.requestLog == nil {
		return
	}
	rec := requestRecord{Method: r.Method, Path: r.URL.Path}
	if json.Valid(body) {
		rec.Body = body
	}
	line, _ := json.Marshal(rec)
	s.requestLog.Write(append(line, '\n'))
}

// faultError is an error response with the {"fault_message": ...} shape.
type faultError string

func fault(format string, args ...any) (int, any) {
	return http.StatusBadRequest, faultError(fmt.Sprintf(format, args...))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func writeFault(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"fault_message": msg})
}

func writeHTTPError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Connection", "close")
	writeJSON(w, status, map[string]string{"error": msg})
}

const (
	msgBeforeStart  = "The requested operation is not supported before starting the microVM."
	msgAfterStart   = "The requested operation is not supported after starting the microVM."
	msgLoadNotFresh = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)

func (s *server) route(method, path string, body []byte) (int, any) {
	key := method + " " + path
	var id string
	for _, prefix := range []string{"/drives/", "/network-interfaces/"} {
		if strings.HasPrefix(path, prefix) {
			id = strings.TrimPrefix(path, prefix)
			key = method + " " + strings.TrimSuffix(prefix, "/")
			if !resourceIDPattern.MatchString(id) {
				return fault("API Resource IDs can only contain alphanumeric characters and underscores.")
			}
		}
	}

	var m map[string]any
	if _, ok := bodies[key]; ok {
		var err error
		if m, err = decodeBody(key, body, s.cfg.ClaimVersion); err != nil {
			return fault("%v", err)
		}
	}

	switch key {
	case "GET /":
		return http.StatusOK, api.InstanceInfo{AppName: "Firecracker", ID: s.cfg.ID,
			State: s.stateName(), VMMVersion: s.cfg.ClaimVersion.String()}
	case "GET /version":
		return http.StatusOK, map[string]string{"firecracker_version": s.cfg.ClaimVersion.String()}
	case "GET /machine-config":
		return http.StatusOK, s.machine
	case "GET /vm/config":
		return http.StatusOK, map[string]any{"machine-config": s.machine, "boot-source": s.boot}
	case "GET /mmds":
		if s.mmds == nil {
			return http.StatusOK, map[string]any{}
		}
		return http.StatusOK, s.mmds
	case "GET /balloon":
		if s.balloon == nil {
			return fault("No balloon device found.")
		}
		return http.StatusOK, s.balloon
	case "GET /balloon/statistics":
		return s.balloonStats()
	case "PUT /mmds", "PATCH /mmds":
		return s.putMMDS(method, body)
	case "PUT /logger":
		return s.putLogger(m)
	case "PUT /metrics":
		return s.putMetrics(m)
	case "PUT /actions":
		return s.action(str(m, "action_type"))
	case "PATCH /vm":
		return s.patchVM(str(m, "state"))
	case "PUT /snapshot/create":
		return s.createSnapshot(m)
	case "PUT /snapshot/load":
		return s.loadSnapshot(m)
	case "PATCH /drives":
		return s.patchDrive(id, m)
	case "PATCH /network-interfaces":
		return s.patchIface(id, m)
	case "PATCH /balloon", "PATCH /balloon/statistics":
		if s.phase == phaseNotStarted {
			return fault(msgBeforeStart)
		}
		if s.balloon == nil {
			return fault("No balloon device found.")
		}
		return http.StatusNoContent, nil
	}

	// The rest are boot-path resources, accepted only before boot.
	if _, ok := bodies[key]; !ok || (method != http.MethodPut && key != "PATCH /machine-config") {
		return http.StatusBadRequest, faultError(fmt.Sprintf("Invalid request method and/or path: %s %s.", method, path))
	}
	if s.phase != phaseNotStarted {
		return fault(msgAfterStart)
	}
	status, answer := s.configure(key, id, m)
	if status < 300 {
		s.bootConfigured = true
	}
	return status, answer
}

func (s *server) stateName() string {
	switch s.phase {
	case phaseRunning:
		return api.StateRunning
	case phasePaused:
		return api.StatePaused
	}
	return api.StateNotStarted
}

func (s *server) configure(key, id string, m map[string]any) (int, any) {
	switch key {
	case "PUT /machine-config":
		s.machine = machineState{}
		return s.applyMachine(m)
	case "PATCH /machine-config":
		if len(m) == 0 {
			return fault("Empty PATCH request.")
		}
		return s.applyMachine(m)
	case "PUT /boot-source":
		for _, k := range []string{"kernel_image_path", "initrd_path"} {
			if p := str(m, k); p != "" {
				if err := s.checkAccess(s.cfg.hostPath(p), false); err != nil {
					return fault("Cannot open %s: %v", k, err)
				}
			}
		}
		s.boot = m
	case "PUT /drives":
		return s.putDrive(id, m)
	case "PUT /network-interfaces":
		return s.putIface(id, m)
	case "PUT /vsock":
		return s.putVsock(m)
	case "PUT /balloon":
		s.balloon = m
	case "PUT /entropy":
	case "PUT /mmds/config":
		for _, n := range m["network_interfaces"].([]any) {
			if _, ok := s.ifaces[n.(string)]; !ok {
				return fault("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
			}
		}
		if len(m["network_interfaces"].([]any)) == 0 {
			return fault("The list of network interface IDs that allow forwarding MMDS requests is empty.")
		}
		s.mmdsConfig = m
	}
	return http.StatusNoContent, nil
}

func (s *server) applyMachine(m map[string]any) (int, any) {
	next := s.machine
	if v, ok := integer(m, "vcpu_count"); ok {
		next.VCPUCount = v
	}
	if v, ok := integer(m, "mem_size_mib"); ok {
		next.MemSizeMiB = v
	}
	if _, ok := m["smt"]; ok {
		next.SMT = boolean(m, "smt")
	}
	if _, ok := m["track_dirty_pages"]; ok {
		next.TrackDirtyPages = boolean(m, "track_dirty_pages")
	}
	if next.SMT && next.VCPUCount > 1 && next.VCPUCount%2 != 0 {
		return fault("The number of vCPUs must be 1 or an even number when SMT is enabled.")
	}
	if str(m, "huge_pages") == "2M" && next.MemSizeMiB%2 != 0 {
		return fault("The memory size must be a multiple of the huge page size.")
	}
	s.machine = next
	return http.StatusNoContent, nil
}

func (s *server) putDrive(id string, m map[string]any) (int, any) {
	if str(m, "drive_id") != id {
		return fault("The id from the path does not match the id from the body!")
	}
	if _, ok := m["socket"]; !ok {
		if _, ok := m["path_on_host"]; !ok {
			return fault("An error occurred when deserializing the json body of a request: missing field `path_on_host`")
		}
		if _, ok := m["is_read_only"]; !ok {
			return fault("An error occurred when deserializing the json body of a request: missing field `is_read_only`")
		}
		if err := s.checkAccess(s.cfg.hostPath(str(m, "path_on_host")), !boolean(m, "is_read_only")); err != nil {
			return fault("Unable to create the block device: %v", err)
		}
	}
	if boolean(m, "is_root_device") {
		for did, d := range s.drives {
			if did != id && boolean(d, "is_root_device") {
				return fault("A root block device already exists!")
			}
		}
	}
	s.drives[id] = m
	return http.StatusNoContent, nil
}

func (s *server) patchDrive(id string, m map[string]any) (int, any) {
	if s.phase == phaseNotStarted {
		return fault(msgBeforeStart)
	}
	if str(m, "drive_id") != id {
		return fault("The id from the path does not match the id from the body!")
	}
	d, ok := s.drives[id]
	if !ok {
		return fault("Drive ID not found: %s", id)
	}
	if p := str(m, "path_on_host"); p != "" {
		if err := s.checkAccess(s.cfg.hostPath(p), !boolean(d, "is_read_only")); err != nil {
			return fault("Unable to patch the block device: %v", err)
		}
		d["path_on_host"] = p
	}
	return http.StatusNoContent, nil
}

func (s *server) putIface(id string, m map[string]any) (int, any) {
	if str(m, "iface_id") != id {
		return fault("The id from the path does not match the id from the body!")
	}
	if len(str(m, "host_dev_name")) > 15 {
		return fault("Could not create the network device: Open tap device failed: Invalid interface name")
	}
	if s.cfg.JailUID > 0 {
		if err := checkJailedTAP(str(m, "host_dev_name"), s.cfg.JailUID, s.cfg.JailGID); err != nil {
			return fault("Could not create the network device: %v", err)
		}
	}
	if mac := str(m, "guest_mac"); mac != "" {
		if _, err := net.ParseMAC(mac); err != nil || len(mac) != 17 {
			return fault("An error occurred when deserializing the json body of a request: invalid MAC address %q", mac)
		}
		for other, ni := range s.ifaces {
			if other != id && strings.EqualFold(str(ni, "guest_mac"), mac) {
				return fault("The MAC address is already in use: %s", mac)
			}
		}
	}
	s.ifaces[id] = m
	return http.StatusNoContent, nil
}

func (s *server) patchIface(id string, m map[string]any) (int, any) {
	if s.phase == phaseNotStarted {
		return fault(msgBeforeStart)
	}
	if str(m, "iface_id") != id {
		return fault("The id from the path does not match the id from the body!")
	}
	if _, ok := s.ifaces[id]; !ok {
		return fault("Invalid interface ID - not found.")
	}
	return http.StatusNoContent, nil
}

func (s *server) putVsock(m map[string]any) (int, any) {
	cid, _ := integer(m, "guest_cid")
	dev, err := s.bindVsock(uint32(cid), str(m, "uds_path"))
	if err != nil {
		return fault("Cannot create backend for vsock device: %v", err)
	}
	if s.vsock != nil {
		// A second PUT replaces the device and unlinks the old socket.
		s.vsock.close()
		os.Remove(s.vsock.hostPath)
	}
	s.vsock = dev
	return http.StatusNoContent, nil
}

func (s *server) putLogger(m map[string]any) (int, any) {
	if s.phase != phaseNotStarted {
		return fault(msgAfterStart)
	}
	if p := str(m, "log_path"); p != "" {
		if err := s.openForJail(p, true); err != nil {
			return fault("Cannot initialize the logger: %v", err)
		}
	}
	s.loggerSet = true
	return http.StatusNoContent, nil
}

func (s *server) putMetrics(m map[string]any) (int, any) {
	if s.phase != phaseNotStarted {
		return fault(msgAfterStart)
	}
	if s.metricsSet {
		return fault("Reinitialization of metrics not allowed.")
	}
	if err := s.openForJail(str(m, "metrics_path"), true); err != nil {
		return fault("Cannot initialize the metrics system: %v", err)
	}
	s.metricsSet = true
	return http.StatusNoContent, nil
}

func (s *server) putMMDS(method string, body []byte) (int, any) {
	if int64(len(body)) > s.cfg.MMDSSizeLimit {
		return http.StatusRequestEntityTooLarge, faultError("The MMDS patch request would exceed the data store limit.")
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || m == nil {
		return fault("The MMDS contents must be a JSON object: %v", err)
	}
	if method == http.MethodPut || s.mmds == nil {
		s.mmds = m
	} else {
		for k, v := range m {
			if v == nil {
				delete(s.mmds, k)
			} else {
				s.mmds[k] = v
			}
		}
	}
	return http.StatusNoContent, nil
}

func (s *server) balloonStats() (int, any) {
	if s.balloon == nil {
		return fault("No balloon device found.")
	}
	if n, _ := integer(s.balloon, "stats_polling_interval_s"); n == 0 || s.phase == phaseNotStarted {
		return fault("Statistics for the balloon device are not enabled")
	}
	return http.StatusOK, map[string]int{"target_pages": 0, "actual_pages": 0, "target_mib": 0, "actual_mib": 0}
}

func (s *server) action(kind string) (int, any) {
	switch kind {
	case api.ActionInstanceStart:
		if s.phase != phaseNotStarted {
			return fault(msgAfterStart)
		}
		if s.boot == nil {
			return fault("Cannot start microvm without kernel configuration.")
		}
		if s.cfg.FailInstanceStart {
			return fault("Failed to start microVM: the double was told to fail InstanceStart.")
		}
		if s.cfg.GuestBootDelay > 0 {
			// Until the agent starts, vsock connections get no reply,
			// as while a real guest kernel boots.
			time.AfterFunc(s.cfg.GuestBootDelay, func() {
				if err := s.startGuest(); err != nil {
					fmt.Fprintf(os.Stderr, "start agent after the boot delay: %v\n", err)
					s.exit(exitGeneric)
				}
			})
		} else if err := s.startGuest(); err != nil {
			return fault("Failed to start microVM: %v", err)
		}
		s.phase = phaseRunning
	case api.ActionSendCtrlAltDel:
		if s.phase == phaseNotStarted {
			return fault(msgBeforeStart)
		}
		if !s.cfg.IgnoreCtrlAltDel {
			// A guest whose init handles Ctrl+Alt+Del reboots, and the
			// process exits 0 once the guest's agent is gone.
			s.currentGuest().stop()
		}
	case api.ActionFlushMetrics:
		if s.phase == phaseNotStarted {
			return fault(msgBeforeStart)
		}
		if s.metricsSet && s.cfg.MetricsPath != "" {
			f, err := os.OpenFile(s.cfg.hostPath(s.cfg.MetricsPath), os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				fmt.Fprintf(f, "{\"utc_timestamp_ms\":%d}\n", time.Now().UnixMilli())
				f.Close()
			}
		}
	}
	return http.StatusNoContent, nil
}

func (s *server) patchVM(state string) (int, any) {
	if s.phase == phaseNotStarted {
		return fault(msgBeforeStart)
	}
	s.setPaused(state == "Paused")
	s.phase = phaseRunning
	if state == "Paused" {
		s.phase = phasePaused
	}
	// Pause and resume reset the vsock transport: every established
	// connection is gone afterwards.
	if s.vsock != nil {
		s.vsock.dropConnections()
	}
	return http.StatusNoContent, nil
}

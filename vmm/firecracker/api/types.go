package api

// Request and response bodies. Field names and JSON tags follow the
// Firecracker API specification (swagger 2.0, firecracker.yaml). Optional
// fields are left out of the body when unset, so a request never carries a
// field the caller did not set; version-dependent fields are not in these
// types at all but are added by the methods that check the version.

// InstanceInfo is the body of GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"` // "Not started", "Running" or "Paused"
	VMMVersion string `json:"vmm_version"`
}

// Instance states reported by GET /.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// MachineConfig is the body of PUT /machine-config and of its GET. A PUT
// resets every optional field left out to its default.
type MachineConfig struct {
	// VCPUCount is the number of vCPUs, 1 to 32 (1 or even with SMT).
	VCPUCount int `json:"vcpu_count"`
	// MemSizeMiB is the guest memory in MiB.
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT enables simultaneous multithreading (x86 only). Default false.
	SMT *bool `json:"smt,omitempty"`
	// TrackDirtyPages enables dirty page tracking for diff snapshots.
	// Default false.
	TrackDirtyPages *bool `json:"track_dirty_pages,omitempty"`
	// HugePages is "None" (default) or "2M"; with "2M" MemSizeMiB must be
	// even.
	HugePages string `json:"huge_pages,omitempty"`
	// CPUTemplate is a deprecated static CPU template: C3, T2, T2S, T2CL,
	// T2A, V1N1 or None.
	CPUTemplate string `json:"cpu_template,omitempty"`
}

// MachineConfigPatch is the body of PATCH /machine-config: only the fields
// set are changed.
type MachineConfigPatch struct {
	VCPUCount       *int   `json:"vcpu_count,omitempty"`
	MemSizeMiB      *int   `json:"mem_size_mib,omitempty"`
	SMT             *bool  `json:"smt,omitempty"`
	TrackDirtyPages *bool  `json:"track_dirty_pages,omitempty"`
	HugePages       string `json:"huge_pages,omitempty"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
}

// BootSource is the body of PUT /boot-source. Firecracker opens the files
// when it receives the request.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	// BootArgs replaces Firecracker's default command line entirely when
	// set, so it must carry reboot=k and console=ttyS0 where wanted.
	BootArgs string `json:"boot_args,omitempty"`
}

// TokenBucket is one bucket of a rate limiter.
type TokenBucket struct {
	// Size is the bucket capacity in tokens (bytes or operations).
	Size int64 `json:"size"`
	// OneTimeBurst is an initial extra budget in tokens.
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	// RefillTimeMillis is the time to refill a full bucket, in ms.
	RefillTimeMillis int64 `json:"refill_time"`
}

// RateLimiter limits a device's bandwidth and operations independently.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive cache types and IO engines.
const (
	CacheUnsafe    = "Unsafe"
	CacheWriteback = "Writeback"
	IOEngineSync   = "Sync"
	IOEngineAsync  = "Async" // needs a host kernel newer than 5.10.51
)

// Drive is the body of PUT /drives/{drive_id} for a virtio-block drive.
// Firecracker opens PathOnHost when it receives the request.
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    string       `json:"cache_type,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
}

// DrivePatch is the body of PATCH /drives/{drive_id} (after boot).
type DrivePatch struct {
	DriveID     string       `json:"drive_id"`
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
// Firecracker opens the TAP when it receives the request, so the TAP must
// exist and be configured before.
type NetworkInterface struct {
	IfaceID string `json:"iface_id"`
	// HostDevName is the TAP name, at most 15 bytes.
	HostDevName string `json:"host_dev_name"`
	// GuestMAC is the guest's MAC address, "AA:FC:00:00:00:01" form.
	GuestMAC      string       `json:"guest_mac,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
	// MTU is advertised to the guest, 68 to 65535; 0 leaves it out.
	// Firecracker 1.16.0 or later.
	MTU int `json:"-"`
}

// NetworkInterfacePatch is the body of PATCH /network-interfaces/{iface_id}
// (after boot): rate limiters only.
type NetworkInterfacePatch struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock. Firecracker binds UDSPath when it
// receives the request and never removes the socket file.
type Vsock struct {
	// GuestCID is the guest's context ID, at least 3.
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Balloon is the body of PUT /balloon and of its GET.
type Balloon struct {
	AmountMiB    int  `json:"amount_mib"`
	DeflateOnOOM bool `json:"deflate_on_oom"`
	// StatsPollingIntervalSeconds enables statistics when non-zero; it can
	// only be turned on before boot.
	StatsPollingIntervalSeconds int  `json:"stats_polling_interval_s,omitempty"`
	FreePageHinting             bool `json:"free_page_hinting,omitempty"`
	FreePageReporting           bool `json:"free_page_reporting,omitempty"`
}

// BalloonUpdate is the body of PATCH /balloon (after boot).
type BalloonUpdate struct {
	AmountMiB int `json:"amount_mib"`
}

// BalloonStatsUpdate is the body of PATCH /balloon/statistics.
type BalloonStatsUpdate struct {
	StatsPollingIntervalSeconds int `json:"stats_polling_interval_s"`
}

// BalloonStats is the body of GET /balloon/statistics. Memory amounts are
// in bytes unless the name says MiB or pages.
type BalloonStats struct {
	TargetPages        int64  `json:"target_pages"`
	ActualPages        int64  `json:"actual_pages"`
	TargetMiB          int64  `json:"target_mib"`
	ActualMiB          int64  `json:"actual_mib"`
	SwapIn             *int64 `json:"swap_in,omitempty"`
	SwapOut            *int64 `json:"swap_out,omitempty"`
	MajorFaults        *int64 `json:"major_faults,omitempty"`
	MinorFaults        *int64 `json:"minor_faults,omitempty"`
	FreeMemory         *int64 `json:"free_memory,omitempty"`
	TotalMemory        *int64 `json:"total_memory,omitempty"`
	AvailableMemory    *int64 `json:"available_memory,omitempty"`
	DiskCaches         *int64 `json:"disk_caches,omitempty"`
	HugetlbAllocations *int64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    *int64 `json:"hugetlb_failures,omitempty"`
	OOMKill            *int64 `json:"oom_kill,omitempty"`
	AllocStall         *int64 `json:"alloc_stall,omitempty"`
	AsyncScan          *int64 `json:"async_scan,omitempty"`
	DirectScan         *int64 `json:"direct_scan,omitempty"`
	AsyncReclaim       *int64 `json:"async_reclaim,omitempty"`
	DirectReclaim      *int64 `json:"direct_reclaim,omitempty"`
}

// Entropy is the body of PUT /entropy; an empty value is valid.
type Entropy struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Logger is the body of PUT /logger. Firecracker opens LogPath with create
// but without truncate or append, so it should be a fresh file or a FIFO.
type Logger struct {
	LogPath string `json:"log_path,omitempty"`
	// Level is Error, Warning, Info (default), Debug, Trace or Off.
	Level         string `json:"level,omitempty"`
	ShowLevel     *bool  `json:"show_level,omitempty"`
	ShowLogOrigin *bool  `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics; metrics can be set up only once.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// MMDSConfig is the body of PUT /mmds/config. The interfaces it names
// must exist already.
type MMDSConfig struct {
	// Version is "V1" (default, deprecated) or "V2".
	Version           string   `json:"version,omitempty"`
	NetworkInterfaces []string `json:"network_interfaces"`
	// IPv4Address is a link-local address, default 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
}

// Actions for PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

type instanceAction struct {
	ActionType string `json:"action_type"`
}

type vmState struct {
	State string `json:"state"`
}

// Snapshot types.
const (
	SnapshotFull = "Full"
	SnapshotDiff = "Diff"
)

// SnapshotCreate is the body of PUT /snapshot/create; the VM must be
// paused.
type SnapshotCreate struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	// SnapshotType is "Full" (default) or "Diff".
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// Memory backend types for snapshot load.
const (
	MemBackendFile = "File"
	MemBackendUffd = "Uffd"
)

// MemBackend names where a restored VM's memory comes from.
type MemBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces the TAP of one interface on snapshot load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride replaces the vsock socket path on snapshot load.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoad describes PUT /snapshot/load. The wire body is built per
// version by Client.LoadSnapshot; see the package documentation.
type SnapshotLoad struct {
	SnapshotPath     string
	MemBackend       MemBackend
	TrackDirtyPages  bool
	ResumeVM         bool
	NetworkOverrides []NetworkOverride
	VsockOverride    *VsockOverride
	ClockRealtime    bool
}

// snapshotLoadBody is the wire form of SnapshotLoad.
type snapshotLoadBody struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemBackend          MemBackend        `json:"mem_backend"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages,omitempty"`
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots,omitempty"`
	ResumeVM            *bool             `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       *bool             `json:"clock_realtime,omitempty"`
}

// networkInterfaceBody is the wire form of NetworkInterface.
type networkInterfaceBody struct {
	NetworkInterface
	MTU *int `json:"mtu,omitempty"`
}

type firecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

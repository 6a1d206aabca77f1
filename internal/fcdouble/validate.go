package fcdouble

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/hearthvm/hearth/vmm/firecracker/api"
)

// kind is the JSON type a field must have.
type kind int

const (
	kString kind = iota
	kBool
	kInt
	kObject
	kArray
	kAny
)

// field describes one accepted request field.
type field struct {
	kind  kind
	since api.Version // zero: in every version the double claims
	enum  []string    // case-sensitive unless fold
	fold  bool
	min   *int64
	max   *int64
	obj   *object // for kObject, and the items of kArray
}

// object describes one request body type with deny_unknown_fields.
type object struct {
	fields   map[string]field
	required []string
	open     bool // unknown fields are ignored (the /metrics body)
}

func i64(v int64) *int64 { return &v }

var (
	tokenBucket = &object{
		fields: map[string]field{
			"size":           {kind: kInt, min: i64(0)},
			"one_time_burst": {kind: kInt, min: i64(0)},
			"refill_time":    {kind: kInt, min: i64(0)},
		},
		required: []string{"size", "refill_time"},
	}
	rateLimiter = &object{fields: map[string]field{
		"bandwidth": {kind: kObject, obj: tokenBucket},
		"ops":       {kind: kObject, obj: tokenBucket},
	}}
	machineConfigFields = map[string]field{
		"vcpu_count":        {kind: kInt, min: i64(1), max: i64(32)},
		"mem_size_mib":      {kind: kInt, min: i64(1)},
		"smt":               {kind: kBool},
		"track_dirty_pages": {kind: kBool},
		"huge_pages":        {kind: kString, enum: []string{"None", "2M"}},
		"cpu_template":      {kind: kString, enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
	}
	bodies = map[string]*object{
		"PUT /machine-config":   {fields: machineConfigFields, required: []string{"vcpu_count", "mem_size_mib"}},
		"PATCH /machine-config": {fields: machineConfigFields},
		"PUT /boot-source": {
			fields: map[string]field{
				"kernel_image_path": {kind: kString}, "initrd_path": {kind: kString}, "boot_args": {kind: kString},
			},
			required: []string{"kernel_image_path"},
		},
		"PUT /drives": {
			fields: map[string]field{
				"drive_id": {kind: kString}, "is_root_device": {kind: kBool}, "partuuid": {kind: kString},
				"cache_type":   {kind: kString, enum: []string{"Unsafe", "Writeback"}},
				"is_read_only": {kind: kBool}, "path_on_host": {kind: kString},
				"rate_limiter": {kind: kObject, obj: rateLimiter},
				"io_engine":    {kind: kString, enum: []string{"Sync", "Async"}},
				"socket":       {kind: kString},
			},
			required: []string{"drive_id", "is_root_device"},
		},
		"PATCH /drives": {
			fields: map[string]field{
				"drive_id": {kind: kString}, "path_on_host": {kind: kString},
				"rate_limiter": {kind: kObject, obj: rateLimiter},
			},
			required: []string{"drive_id"},
		},
		"PUT /network-interfaces": {
			fields: map[string]field{
				"iface_id": {kind: kString}, "host_dev_name": {kind: kString}, "guest_mac": {kind: kString},
				"rx_rate_limiter": {kind: kObject, obj: rateLimiter},
				"tx_rate_limiter": {kind: kObject, obj: rateLimiter},
				"mtu":             {kind: kInt, min: i64(68), max: i64(65535), since: api.VersionInterfaceMTU},
			},
			required: []string{"iface_id", "host_dev_name"},
		},
		"PATCH /network-interfaces": {
			fields: map[string]field{
				"iface_id":        {kind: kString},
				"rx_rate_limiter": {kind: kObject, obj: rateLimiter},
				"tx_rate_limiter": {kind: kObject, obj: rateLimiter},
			},
			required: []string{"iface_id"},
		},
		"PUT /vsock": {
			fields: map[string]field{
				"guest_cid": {kind: kInt, min: i64(3), max: i64(0xFFFFFFFE)},
				"uds_path":  {kind: kString}, "vsock_id": {kind: kString},
			},
			required: []string{"guest_cid", "uds_path"},
		},
		"PUT /balloon": {
			fields: map[string]field{
				"amount_mib": {kind: kInt, min: i64(0)}, "deflate_on_oom": {kind: kBool},
				"stats_polling_interval_s": {kind: kInt, min: i64(0)},
				"free_page_hinting":        {kind: kBool}, "free_page_reporting": {kind: kBool},
			},
			required: []string{"amount_mib", "deflate_on_oom"},
		},
		"PATCH /balloon": {
			fields:   map[string]field{"amount_mib": {kind: kInt, min: i64(0)}},
			required: []string{"amount_mib"},
		},
		"PATCH /balloon/statistics": {
			fields:   map[string]field{"stats_polling_interval_s": {kind: kInt, min: i64(0)}},
			required: []string{"stats_polling_interval_s"},
		},
		"PUT /entropy": {fields: map[string]field{"rate_limiter": {kind: kObject, obj: rateLimiter}}},
		"PUT /logger": {fields: map[string]field{
			"log_path":   {kind: kString},
			"level":      {kind: kString, fold: true, enum: []string{"Error", "Warning", "Info", "Debug", "Trace", "Off"}},
			"show_level": {kind: kBool}, "show_log_origin": {kind: kBool}, "module": {kind: kString},
		}},
		"PUT /metrics": {
			fields:   map[string]field{"metrics_path": {kind: kString}},
			required: []string{"metrics_path"},
			open:     true,
		},
		"PUT /mmds/config": {
			fields: map[string]field{
				"version":            {kind: kString, enum: []string{"V1", "V2"}},
				"network_interfaces": {kind: kArray, obj: &object{}},
				"ipv4_address":       {kind: kString},
				"imds_compat":        {kind: kBool},
			},
			required: []string{"network_interfaces"},
		},
		"PUT /actions": {
			fields: map[string]field{
				"action_type": {kind: kString, enum: []string{"InstanceStart", "SendCtrlAltDel", "FlushMetrics"}},
			},
			required: []string{"action_type"},
		},
		"PATCH /vm": {
			fields:   map[string]field{"state": {kind: kString, enum: []string{"Paused", "Resumed"}}},
			required: []string{"state"},
		},
		"PUT /snapshot/create": {
			fields: map[string]field{
				"snapshot_path": {kind: kString}, "mem_file_path": {kind: kString},
				"snapshot_type": {kind: kString, enum: []string{"Full", "Diff"}},
			},
			required: []string{"snapshot_path", "mem_file_path"},
		},
		"PUT /snapshot/load": {
			fields: map[string]field{
				"snapshot_path": {kind: kString},
				"mem_backend": {kind: kObject, since: api.VersionMemBackend, obj: &object{
					fields: map[string]field{
						"backend_type": {kind: kString, enum: []string{"File", "Uffd"}},
						"backend_path": {kind: kString},
					},
					required: []string{"backend_type", "backend_path"},
				}},
				"mem_file_path":         {kind: kString},
				"enable_diff_snapshots": {kind: kBool},
				"track_dirty_pages":     {kind: kBool, since: api.VersionLoadTrackDirty},
				"resume_vm":             {kind: kBool},
				"network_overrides": {kind: kArray, since: api.VersionNetworkOverrides, obj: &object{
					fields:   map[string]field{"iface_id": {kind: kString}, "host_dev_name": {kind: kString}},
					required: []string{"iface_id", "host_dev_name"},
				}},
				"vsock_override": {kind: kObject, since: api.VersionVsockOverride, obj: &object{
					fields:   map[string]field{"uds_path": {kind: kString}},
					required: []string{"uds_path"},
				}},
				"clock_realtime": {kind: kBool, since: api.VersionClockRealtime},
			},
			required: []string{"snapshot_path"},
		},
	}
)

// decodeBody checks raw against the body type and version, and returns
// the decoded object. Messages follow serde's wording where Firecracker
// passes them through.
func decodeBody(key string, raw []byte, v api.Version) (map[string]any, error) {
	o, ok := bodies[key]
	if !ok {
		return nil, fmt.Errorf("no body type for %s", key)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("An error occurred when deserializing the json body of a request: %v", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("An error occurred when deserializing the json body of a request: trailing characters")
	}
	if err := checkObject(o, m, "", v); err != nil {
		return nil, fmt.Errorf("An error occurred when deserializing the json body of a request: %v", err)
	}
	return m, nil
}

func checkObject(o *object, m map[string]any, at string, v api.Version) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := o.fields[k]
		if !ok || (!f.since.IsZero() && v.Less(f.since)) {
			if o.open {
				continue
			}
			return fmt.Errorf("unknown field `%s%s`", at, k)
		}
		if err := checkField(f, m[k], at+k, v); err != nil {
			return err
		}
	}
	for _, r := range o.required {
		if _, ok := m[r]; !ok {
			return fmt.Errorf("missing field `%s%s`", at, r)
		}
	}
	return nil
}

func checkField(f field, val any, at string, v api.Version) error {
	switch f.kind {
	case kString:
		s, ok := val.(string)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: expected a string", at)
		}
		if len(f.enum) > 0 && !inEnum(f.enum, s, f.fold) {
			return fmt.Errorf("unknown variant `%s` for `%s`, expected one of %s", s, at, strings.Join(f.enum, ", "))
		}
	case kBool:
		if _, ok := val.(bool); !ok {
			return fmt.Errorf("invalid type for `%s`: expected a boolean", at)
		}
	case kInt:
		n, ok := val.(json.Number)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: expected an integer", at)
		}
		i, err := n.Int64()
		if err != nil {
			return fmt.Errorf("invalid value for `%s`: %s is not an integer", at, n)
		}
		if f.min != nil && i < *f.min {
			return fmt.Errorf("invalid value for `%s`: %d is below %d", at, i, *f.min)
		}
		if f.max != nil && i > *f.max {
			return fmt.Errorf("invalid value for `%s`: %d is above %d", at, i, *f.max)
		}
	case kObject:
		m, ok := val.(map[string]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: expected an object", at)
		}
		return checkObject(f.obj, m, at+".", v)
	case kArray:
		arr, ok := val.([]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: expected a sequence", at)
		}
		for i, item := range arr {
			if len(f.obj.fields) == 0 {
				if _, ok := item.(string); !ok {
					return fmt.Errorf("invalid type for `%s[%d]`: expected a string", at, i)
				}
				continue
			}
			m, ok := item.(map[string]any)
			if !ok {
				return fmt.Errorf("invalid type for `%s[%d]`: expected an object", at, i)
			}
			if err := checkObject(f.obj, m, fmt.Sprintf("%s[%d].", at, i), v); err != nil {
				return err
			}
		}
	}
	return nil
}

func inEnum(enum []string, s string, fold bool) bool {
	for _, e := range enum {
		if e == s || (fold && strings.EqualFold(e, s)) {
			return true
		}
	}
	return false
}

var resourceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// instanceIDPattern matches the --id values firecracker and the jailer accept.
var instanceIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func boolean(m map[string]any, k string) bool {
	b, _ := m[k].(bool)
	return b
}

func integer(m map[string]any, k string) (int64, bool) {
	n, ok := m[k].(json.Number)
	if !ok {
		return 0, false
	}
	i, err := n.Int64()
	return i, err == nil
}

package api

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrUnsupported reports that the caller requested a feature the running
// Firecracker version lacks. Errors wrapping it name the field and the
// first version that has it.
var ErrUnsupported = errors.New("not supported by this firecracker version")

// Version is a Firecracker release version, MAJOR.MINOR.PATCH.
type Version struct {
	Major, Minor, Patch int
}

// Versions that introduced request fields the client gates on.
var (
	VersionMemBackend       = Version{1, 1, 0}  // mem_backend on /snapshot/load
	VersionNetworkOverrides = Version{1, 12, 0} // network_overrides on /snapshot/load
	VersionLoadTrackDirty   = Version{1, 13, 0} // track_dirty_pages on /snapshot/load
	VersionVsockOverride    = Version{1, 16, 0} // vsock_override on /snapshot/load
	VersionClockRealtime    = Version{1, 16, 0} // clock_realtime on /snapshot/load
	VersionInterfaceMTU     = Version{1, 16, 0} // mtu on /network-interfaces
)

// ParseVersion parses "1.16.1", "v1.16.1" or "1.17.0-dev". A pre-release
// or build suffix is ignored, so 1.17.0-dev compares equal to 1.17.0.
func ParseVersion(s string) (Version, error) {
	core := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(core, "-+"); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("invalid firecracker version %q: want MAJOR.MINOR.PATCH", s)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Version{}, fmt.Errorf("invalid firecracker version %q: %q is not a number", s, p)
		}
		nums[i] = n
	}
	return Version{nums[0], nums[1], nums[2]}, nil
}

// String formats v as MAJOR.MINOR.PATCH.
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
}

// Less reports whether v is an earlier release than w.
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Patch < w.Patch
}

// AtLeast reports whether v is w or a later release.
func (v Version) AtLeast(w Version) bool { return !v.Less(w) }

// IsZero reports whether v is unset.
func (v Version) IsZero() bool { return v == Version{} }

func requireVersion(have, want Version, field string) error {
	if have.AtLeast(want) {
		return nil
	}
	return fmt.Errorf("%s needs firecracker %s or later, running %s: %w", field, want, have, ErrUnsupported)
}

package guestinit

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Target string
	FSType string
	Source string
}

// parseMountinfo parses /proc/self/mountinfo (proc(5)), in mount order.
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var entries []mountEntry
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+3 {
			return nil, fmt.Errorf("mountinfo line %d: %q has too few fields", line, sc.Text())
		}
		entries = append(entries, mountEntry{
			Target: unescapeMountinfo(fields[4]),
			FSType: fields[sep+1],
			Source: unescapeMountinfo(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return entries, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a mountinfo field.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// pseudoFilesystems hold no data to write back, so Shutdown leaves them
// mounted.
var pseudoFilesystems = map[string]bool{
	"proc": true, "sysfs": true, "devtmpfs": true, "devpts": true, "tmpfs": true,
	"ramfs": true, "rootfs": true, "cgroup": true, "cgroup2": true, "mqueue": true,
	"debugfs": true, "tracefs": true, "securityfs": true, "pstore": true,
	"bpf": true, "configfs": true, "hugetlbfs": true, "fusectl": true,
}

// unmountOrder returns the mount points to unmount at shutdown, children
// before parents: every mount but "/" and the pseudo filesystems.
func unmountOrder(entries []mountEntry) []string {
	var targets []string
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if e.Target == "/" || pseudoFilesystems[e.FSType] {
			continue
		}
		targets = append(targets, e.Target)
	}
	return targets
}

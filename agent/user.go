package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Files that user lookups read. They are the guest root's files once the
// agent has switched into it.
const (
	passwdFile = "/etc/passwd"
	groupFile  = "/etc/group"
)

// identity is the user a command runs as.
type identity struct {
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups, from /etc/group membership
	home   string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name string
	uid  uint32
	gid  uint32
	home string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// lookupUser resolves a START user field: "name", "uid", "name:group" or
// "uid:gid", where each group may also be a name or a number. A numeric
// uid needs no passwd entry, and without one it gets gid 0 and HOME "/".
// Without a group part the gid is the passwd entry's primary group.
func lookupUser(spec, passwdPath, groupPath string) (identity, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return identity{}, fmt.Errorf("invalid user %q: want name, uid, name:group or uid:gid", spec)
	}

	users, err := readPasswd(passwdPath)
	if err != nil && !(errors.Is(err, os.ErrNotExist) && isNumeric(userPart)) {
		return identity{}, err
	}
	id, name, err := resolveUserPart(userPart, users)
	if err != nil {
		return identity{}, err
	}

	var groups []groupEntry
	if hasGroup || name != "" {
		groups, err = readGroup(groupPath)
		if err != nil && !(errors.Is(err, os.ErrNotExist) && (!hasGroup || isNumeric(groupPart))) {
			return identity{}, err
		}
	}
	if hasGroup {
		if id.gid, err = resolveGroupPart(groupPart, groups); err != nil {
			return identity{}, err
		}
	}
	if name != "" {
		id.groups = memberGroups(name, groups)
	}
	return id, nil
}

// resolveUserPart returns the identity of a user name or uid and the
// user's name, which is empty for a uid without a passwd entry.
func resolveUserPart(userPart string, users []passwdEntry) (identity, string, error) {
	if uid, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		for _, u := range users {
			if u.uid == uint32(uid) {
				return identity{uid: u.uid, gid: u.gid, home: u.home}, u.name, nil
			}
		}
		return identity{uid: uint32(uid), gid: 0, home: "/"}, "", nil
	}

	for _, u := range users {
		if u.name == userPart {
			return identity{uid: u.uid, gid: u.gid, home: u.home}, u.name, nil
		}
	}
	return identity{}, "", fmt.Errorf("user %q not found in %s; use a numeric uid or add the user to the image", userPart, passwdFile)
}

func resolveGroupPart(groupPart string, groups []groupEntry) (uint32, error) {
	if gid, err := strconv.ParseUint(groupPart, 10, 32); err == nil {
		return uint32(gid), nil
	}
	for _, g := range groups {
		if g.name == groupPart {
			return g.gid, nil
		}
	}
	return 0, fmt.Errorf("group %q not found in %s; use a numeric gid or add the group to the image", groupPart, groupFile)
}

func memberGroups(name string, groups []groupEntry) []uint32 {
	var gids []uint32
	for _, g := range groups {
		for _, m := range g.members {
			if m == name {
				gids = append(gids, g.gid)
				break
			}
		}
	}
	return gids
}

func isNumeric(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// readPasswd parses path in /etc/passwd format, skipping comments and
// malformed lines.
func readPasswd(path string) ([]passwdEntry, error) {
	var users []passwdEntry
	err := readColonFile(path, func(fields []string) {
		if len(fields) < 6 {
			return
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return
		}
		home := fields[5]
		if home == "" {
			home = "/"
		}
		users = append(users, passwdEntry{name: fields[0], uid: uint32(uid), gid: uint32(gid), home: home})
	})
	return users, err
}

// readGroup parses path in /etc/group format, skipping comments and
// malformed lines.
func readGroup(path string) ([]groupEntry, error) {
	var groups []groupEntry
	err := readColonFile(path, func(fields []string) {
		if len(fields) < 3 {
			return
		}
		gid, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			return
		}
		g := groupEntry{name: fields[0], gid: uint32(gid)}
		if len(fields) > 3 && fields[3] != "" {
			g.members = strings.Split(fields[3], ",")
		}
		groups = append(groups, g)
	})
	return groups, err
}

func readColonFile(path string, parse func(fields []string)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read user database: %w", err)
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parse(strings.Split(line, ":"))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

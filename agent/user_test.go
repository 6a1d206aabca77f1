package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testPasswd = `# comment
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
nohome:x:1001:1001::::
broken line
bad:x:notanumber:0::/:/bin/sh
`

const testGroup = `root:x:0:
nogroup:x:65534:
alice:x:1000:
wheel:x:10:root,alice
audio:x:29:bob,alice
`

func writeUserFiles(t *testing.T) (passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	passwd = filepath.Join(dir, "passwd")
	group = filepath.Join(dir, "group")
	if err := os.WriteFile(passwd, []byte(testPasswd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(group, []byte(testGroup), 0o644); err != nil {
		t.Fatal(err)
	}
	return passwd, group
}

func TestLookupUser(t *testing.T) {
	passwd, group := writeUserFiles(t)
	tests := []struct {
		spec string
		want identity
	}{
		{"root", identity{uid: 0, gid: 0, groups: []uint32{10}, home: "/root"}},
		{"alice", identity{uid: 1000, gid: 1000, groups: []uint32{10, 29}, home: "/home/alice"}},
		{"1000", identity{uid: 1000, gid: 1000, groups: []uint32{10, 29}, home: "/home/alice"}},
		{"alice:audio", identity{uid: 1000, gid: 29, groups: []uint32{10, 29}, home: "/home/alice"}},
		{"alice:77", identity{uid: 1000, gid: 77, groups: []uint32{10, 29}, home: "/home/alice"}},
		{"nobody", identity{uid: 65534, gid: 65534, home: "/nonexistent"}},
		{"nohome", identity{uid: 1001, gid: 1001, home: "/"}},
		{"4242", identity{uid: 4242, gid: 0, home: "/"}},
		{"4242:4343", identity{uid: 4242, gid: 4343, home: "/"}},
		{"4242:wheel", identity{uid: 4242, gid: 10, home: "/"}},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := lookupUser(tc.spec, passwd, group)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestLookupUserErrors(t *testing.T) {
	passwd, group := writeUserFiles(t)
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name    string
		spec    string
		passwd  string
		group   string
		wantErr string
	}{
		{"unknown name", "bob", passwd, group, `user "bob" not found`},
		{"unknown group", "alice:video", passwd, group, `group "video" not found`},
		{"empty", "", passwd, group, "invalid user"},
		{"empty group", "alice:", passwd, group, "invalid user"},
		{"name without passwd file", "alice", missing, group, "read user database"},
		{"group name without group file", "4242:wheel", passwd, missing, "read user database"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := lookupUser(tc.spec, tc.passwd, tc.group)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestLookupUserWithoutFiles checks that numeric ids work in an image
// that has neither /etc/passwd nor /etc/group.
func TestLookupUserWithoutFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	got, err := lookupUser("4242:4343", missing, missing)
	if err != nil {
		t.Fatal(err)
	}
	want := identity{uid: 4242, gid: 4343, home: "/"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

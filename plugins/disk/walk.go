package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tend.dev/tend/plugins/sdk"
)

// The walk. Every directory is reached from the one above it with
// openat(O_NOFOLLOW|O_DIRECTORY) and checked to be the directory that
// fstatat saw; every file operation is relative to the descriptor of the
// directory that holds the name (fstatat, unlinkat, renameat). A name
// swapped for a symlink after it was looked at is refused (ELOOP or
// ENOTDIR), never followed, and a directory renamed elsewhere while it is
// walked is still the directory whose descriptor is held: nothing outside
// the cleaned directory can be reached, whatever changes under the walk.
// What remains is that a file name may be replaced between its fstatat and
// its unlinkat: the name then removed is still in the same directory (a
// symlink is removed itself, never its target).

// Hooks for tests, called just before the walk acts on a name (rel is
// relative to the top directory).
var (
	// beforeEnter is called before a subdirectory is opened.
	beforeEnter = func(rel string) {}
	// beforeRemove is called before a file is deleted or moved.
	beforeRemove = func(rel string) {}
)

// dirFlags open a directory without following a symlink in its last
// component.
const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

// dir is an open directory, rel to the top one.
type dir struct {
	f   *os.File
	rel string
}

func (d dir) fd() int { return int(d.f.Fd()) }

// stat is fstatat(d, name) without following a symlink.
func (d dir) stat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// open opens the subdirectory name, which must still be the directory that
// st (from stat) describes.
func (d dir) open(name string, st unix.Stat_t) (dir, error) {
	fd, err := unix.Openat(d.fd(), name, dirFlags, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return dir{}, errors.New("changed into something other than a directory while it was being opened (a symlink?); not entering it")
		}
		return dir{}, err
	}
	sub := dir{f: os.NewFile(uintptr(fd), name), rel: path.Join(d.rel, name)}
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil || got.Dev != st.Dev || got.Ino != st.Ino {
		sub.f.Close()
		return dir{}, errors.New("changed while it was being opened; not entering it")
	}
	return sub, nil
}

// names lists the directory's entries.
func (d dir) names() ([]string, error) {
	// Read through a second descriptor: reading moves the offset, and d
	// may be listed again (the quarantine's top directory).
	fd, err := unix.Openat(d.fd(), ".", dirFlags, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), d.rel)
	defer f.Close()
	return f.Readdirnames(-1)
}

// mkdir makes the subdirectory name (mode 0700) if it is missing and
// opens it; an existing name must be a real directory.
func (d dir) mkdir(name string) (dir, error) {
	if err := unix.Mkdirat(d.fd(), name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return dir{}, err
	}
	st, err := d.stat(name)
	if err != nil {
		return dir{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return dir{}, fmt.Errorf("exists and is not a directory (%s)", typeOf(st))
	}
	return d.open(name, st)
}

func isDir(st unix.Stat_t) bool     { return st.Mode&unix.S_IFMT == unix.S_IFDIR }
func isRegular(st unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFREG }
func isSymlink(st unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFLNK }
func modTime(st unix.Stat_t) time.Time {
	return time.Unix(st.Mtim.Unix())
}

// typeOf names a file type for messages.
func typeOf(st unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "device"
	}
	return "unknown type"
}

// openTop opens the directory to clean after checking that it is a
// directory and not a symlink, and that what was opened is what was
// checked.
func openTop(p string) (dir, unix.Stat_t, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return dir{}, unix.Stat_t{}, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return dir{}, unix.Stat_t{}, errors.New("is a symbolic link; give the real directory (symlinks are never followed)")
	}
	if !fi.IsDir() {
		return dir{}, unix.Stat_t{}, fmt.Errorf("is not a directory (%s)", fi.Mode().Type())
	}
	fd, err := unix.Open(p, dirFlags, 0)
	if err != nil {
		return dir{}, unix.Stat_t{}, fmt.Errorf("open: %w", err)
	}
	top := dir{f: os.NewFile(uintptr(fd), p), rel: "."}
	var st unix.Stat_t
	checked, _ := fi.Sys().(*syscall.Stat_t)
	if err := unix.Fstat(fd, &st); err != nil || checked == nil || uint64(st.Dev) != uint64(checked.Dev) || st.Ino != checked.Ino {
		top.f.Close()
		return dir{}, unix.Stat_t{}, errors.New("changed while it was being opened; not touching it")
	}
	return top, st, nil
}

// run is the state of one cleanup.
type run struct {
	ctx      context.Context
	c        cleanupParams
	top      dir
	dev      uint64
	now      time.Time
	taskID   string
	matched  []string
	problems []string
	metrics  map[string]float64
	skipped  map[string]int
	// quarantine is the task's quarantine directory, once made.
	quarantine *dir
}

func (r *run) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *run) skip(why string) { r.skipped[why]++ }

func (p *Plugin) cleanup(ctx context.Context, c cleanupParams, taskID string) sdk.ExecuteResult {
	fail := func(format string, args ...any) sdk.ExecuteResult {
		return sdk.ExecuteResult{Output: fmt.Sprintf("disk.cleanup %s: ", sdk.Quote(c.Path, 256)) + fmt.Sprintf(format, args...)}
	}
	top, st, err := openTop(c.Path)
	if err != nil {
		return fail("%v", unwrapPath(err))
	}
	defer top.f.Close()
	r := &run{
		ctx: ctx, c: c, top: top, dev: uint64(st.Dev), now: p.now(), taskID: taskID,
		metrics: map[string]float64{"files_deleted": 0, "files_quarantined": 0, "bytes_freed": 0},
		skipped: map[string]int{},
	}
	defer func() {
		if r.quarantine != nil {
			r.quarantine.f.Close()
		}
	}()
	// Purge first, so that this task's own quarantine is never purged.
	r.purgeQuarantine()
	r.dir(top, 0)
	if err := ctx.Err(); err != nil {
		r.problem("stopped early: %v", context.Cause(ctx))
	}
	return r.result()
}

// dir cleans one open directory.
func (r *run) dir(d dir, depth int) {
	names, err := d.names()
	if err != nil {
		r.problem("read %s: %v", sdk.Quote(d.rel, 200), err)
	}
	for _, name := range names {
		if r.ctx.Err() != nil {
			return
		}
		if d.rel == "." && name == QuarantineDir {
			continue
		}
		relName := path.Join(d.rel, name)
		st, err := d.stat(name)
		if err != nil {
			if !errors.Is(err, unix.ENOENT) {
				r.problem("lstat %s: %v", sdk.Quote(relName, 200), err)
			}
			continue
		}
		switch {
		case isSymlink(st):
			r.skip("symlinks")
		case isDir(st):
			switch {
			case !r.c.Recursive:
			case uint64(st.Dev) != r.dev:
				r.skip("directories on another file system")
			case depth+1 >= maxDepth:
				r.skip(fmt.Sprintf("directories deeper than %d", maxDepth))
			default:
				beforeEnter(relName)
				sub, err := d.open(name, st)
				if err != nil {
					r.problem("open %s: %v", sdk.Quote(relName, 200), err)
					continue
				}
				r.dir(sub, depth+1)
				sub.f.Close()
			}
		case isRegular(st):
			r.file(d, name, st)
		default:
			r.skip("special files")
		}
	}
}

// file deletes or quarantines one regular file of d if it matches.
func (r *run) file(d dir, name string, st unix.Stat_t) {
	if ok, _ := filepath.Match(r.c.Pattern, name); !ok {
		return
	}
	if r.now.Sub(modTime(st)) < r.c.OlderThan {
		r.skip("matching files younger than olderThan")
		return
	}
	relName := path.Join(d.rel, name)
	size := float64(st.Size)
	beforeRemove(relName)
	if r.c.Mode == ModeDelete {
		// unlinkat removes the name in d: if it was swapped for a symlink
		// since the fstatat, the link goes, never its target.
		if err := unix.Unlinkat(d.fd(), name, 0); err != nil {
			r.problem("delete %s: %v", sdk.Quote(relName, 200), err)
			return
		}
		r.metrics["files_deleted"]++
		r.metrics["bytes_freed"] += size
	} else {
		if err := r.moveToQuarantine(d, name); err != nil {
			r.problem("quarantine %s: %v", sdk.Quote(relName, 200), err)
			return
		}
		r.metrics["files_quarantined"]++
		r.metrics["bytes_quarantined"] += size
	}
	r.matched = append(r.matched, relName)
}

// moveToQuarantine moves name in d to QuarantineDir/<task>/<d.rel>/name.
func (r *run) moveToQuarantine(d dir, name string) error {
	if r.quarantine == nil {
		q, err := r.top.mkdir(QuarantineDir)
		if err != nil {
			return fmt.Errorf("%s: %w", QuarantineDir, err)
		}
		defer q.f.Close()
		task, err := q.mkdir(r.taskID)
		if err != nil {
			return fmt.Errorf("%s: %w", path.Join(QuarantineDir, r.taskID), err)
		}
		r.quarantine = &task
	}
	dst := *r.quarantine
	var opened []dir
	defer func() {
		for _, o := range opened {
			o.f.Close()
		}
	}()
	made := path.Join(QuarantineDir, r.taskID)
	for _, elem := range splitRel(d.rel) {
		made = path.Join(made, elem)
		next, err := dst.mkdir(elem)
		if err != nil {
			return fmt.Errorf("%s: %w", made, err)
		}
		opened = append(opened, next)
		dst = next
	}
	// Never replace a file already quarantined under the same name.
	target := name
	for i := 1; ; i++ {
		if _, err := dst.stat(target); errors.Is(err, unix.ENOENT) {
			break
		} else if i > 100 {
			return fmt.Errorf("too many quarantined files named %s", sdk.Quote(name, 200))
		}
		target = fmt.Sprintf("%s~%d", name, i)
	}
	return unix.Renameat(d.fd(), name, dst.fd(), target)
}

// splitRel splits a clean relative slash path into its elements ("." has
// none).
func splitRel(rel string) []string {
	if rel == "." || rel == "" {
		return nil
	}
	return strings.Split(rel, "/")
}

// purgeQuarantine removes the task directories in QuarantineDir last
// modified more than quarantineTTL ago, after checking that it is a real
// directory.
func (r *run) purgeQuarantine() {
	st, err := r.top.stat(QuarantineDir)
	if errors.Is(err, unix.ENOENT) {
		return
	}
	if err != nil {
		r.problem("quarantine: %v", err)
		return
	}
	if !isDir(st) {
		r.problem("%s is not a directory (%s); not purging it", QuarantineDir, typeOf(st))
		return
	}
	q, err := r.top.open(QuarantineDir, st)
	if err != nil {
		r.problem("%s: %v; not purging it", QuarantineDir, err)
		return
	}
	defer q.f.Close()
	names, err := q.names()
	if err != nil {
		r.problem("quarantine: %v", err)
	}
	for _, name := range names {
		st, err := q.stat(name)
		if err != nil || !isDir(st) {
			continue
		}
		if r.now.Sub(modTime(st)) < r.c.QuarantineTTL {
			continue
		}
		size, err := removeAll(q, name, st, 0)
		r.metrics["bytes_freed"] += float64(size)
		if err != nil {
			r.problem("purge quarantine %s: %v", sdk.Quote(name, 200), err)
			continue
		}
		r.metrics["quarantine_purged"]++
	}
}

// removeAll removes the directory name of d (described by st) and
// everything below it, without following symlinks, and returns the bytes
// of the regular files removed.
func removeAll(d dir, name string, st unix.Stat_t, depth int) (int64, error) {
	if depth >= maxDepth {
		return 0, fmt.Errorf("deeper than %d directories", maxDepth)
	}
	sub, err := d.open(name, st)
	if err != nil {
		return 0, err
	}
	defer sub.f.Close()
	names, err := sub.names()
	if err != nil {
		return 0, err
	}
	var freed int64
	for _, n := range names {
		est, err := sub.stat(n)
		if err != nil {
			continue
		}
		if isDir(est) {
			size, err := removeAll(sub, n, est, depth+1)
			freed += size
			if err != nil {
				return freed, err
			}
			continue
		}
		if err := unix.Unlinkat(sub.fd(), n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return freed, fmt.Errorf("%s: %w", sdk.Quote(path.Join(sub.rel, n), 200), err)
		}
		if isRegular(est) {
			freed += est.Size
		}
	}
	if err := unix.Unlinkat(d.fd(), name, unix.AT_REMOVEDIR); err != nil {
		return freed, err
	}
	return freed, nil
}

// unwrapPath drops the *PathError wrapper, whose path is already named in
// the message.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

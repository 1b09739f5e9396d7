// Package disk is the tend-plugin-disk action plugin: disk.cleanup deletes
// (or quarantines) old files matching a pattern in one directory.
//
// Safety, in order of importance:
//   - Every file operation goes through an os.Root opened on the directory,
//     so no name, symlink or race can reach outside it; the directory itself
//     must not be a symlink (checked with Lstat, and the opened directory
//     must be the one checked).
//   - Symlinks are never followed and never deleted; only regular files
//     are touched (devices, sockets, FIFOs and directories are left alone).
//   - With recursive, subdirectories on another file system are not entered
//     (like find -xdev), and depth is limited.
//   - The quarantine directory (.tend-quarantine at the top) is never
//     cleaned by pattern, only purged by age.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"tend.dev/tend/internal/version"
	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// ActionCleanup is the plugin's one action.
const ActionCleanup = "disk.cleanup"

// QuarantineDir is the directory, at the top of the cleaned directory, that
// quarantined files are moved to, one subdirectory per task.
const QuarantineDir = ".tend-quarantine"

// Modes of disk.cleanup.
const (
	ModeDelete     = "delete"
	ModeQuarantine = "quarantine"
)

const (
	defaultQuarantineTTL = 24 * time.Hour
	// maxDepth is how deep recursive goes below the directory.
	maxDepth = 32
	// maxListed is the most file names listed in the output.
	maxListed = 20
	// maxProblems is the most problems listed in the output.
	maxProblems = 10
)

// Plugin implements sdk.Action.
type Plugin struct {
	log *slog.Logger
	now func() time.Time
}

var _ sdk.Action = (*Plugin)(nil)

// New returns the plugin; log may be nil.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log, now: time.Now}
}

// Describe lists disk.cleanup and its parameters.
func (p *Plugin) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{
		Name:    "disk",
		Version: version.Version,
		Actions: []*pluginv1.ActionInfo{{
			Name:        "cleanup",
			Description: "Delete, or move to a quarantine with a TTL, the regular files in a directory whose base name matches a pattern and that are older than an age. Never follows symlinks, never leaves the directory.",
			Params: []*pluginv1.ParamInfo{
				{Name: "path", Type: "string", Required: true, Description: "the directory: an absolute, clean path, not a symlink, not /"},
				{Name: "pattern", Type: "string", Description: `glob on the base name (path/filepath.Match), default "*"`},
				{Name: "olderThan", Type: "string", Description: `only files last modified at least this long ago (Go duration), default "0s"`},
				{Name: "mode", Type: "string", Description: `"delete" (default) or "quarantine"`},
				{Name: "recursive", Type: "bool", Description: "also clean subdirectories on the same file system, default false"},
				{Name: "quarantineTTL", Type: "string", Description: `quarantine directories older than this are purged on every run (Go duration), default "24h"`},
			},
		}},
	}, nil
}

// cleanupParams are disk.cleanup's parameters.
type cleanupParams struct {
	Path          string
	Pattern       string
	OlderThan     time.Duration
	Mode          string
	Recursive     bool
	QuarantineTTL time.Duration
}

func parseCleanup(action string, m map[string]any) (cleanupParams, error) {
	if action != ActionCleanup {
		return cleanupParams{}, sdk.UnknownAction(action, ActionCleanup)
	}
	p := sdk.NewParams(m)
	c := cleanupParams{
		Path:          p.Path("path"),
		Pattern:       p.OptString("pattern", "*"),
		OlderThan:     p.OptDuration("olderThan", 0),
		Mode:          p.OptString("mode", ModeDelete),
		Recursive:     p.OptBool("recursive", false),
		QuarantineTTL: p.OptDuration("quarantineTTL", defaultQuarantineTTL),
	}
	if c.Path == "/" {
		p.Problem("path", `refusing to clean "/"; name the directory that holds the files`)
	}
	switch {
	case c.Pattern == "":
		p.Problem("pattern", `must not be empty; "*" matches every name`)
	case strings.ContainsRune(c.Pattern, '/'):
		p.Problem("pattern", "is matched against base names and must not contain '/', got %s", sdk.Quote(c.Pattern, 200))
	default:
		if _, err := filepath.Match(c.Pattern, ""); err != nil {
			p.Problem("pattern", "%s is not a valid glob (path/filepath.Match): %v", sdk.Quote(c.Pattern, 200), err)
		}
	}
	if c.Mode != ModeDelete && c.Mode != ModeQuarantine {
		p.Problem("mode", "want %q or %q, got %s", ModeDelete, ModeQuarantine, sdk.Quote(c.Mode, 64))
	}
	return c, p.Err()
}

// Validate checks disk.cleanup's parameters.
func (p *Plugin) Validate(_ context.Context, action string, params map[string]any) error {
	_, err := parseCleanup(action, params)
	return err
}

// Execute cleans the directory.
func (p *Plugin) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	c, err := parseCleanup(req.Action, req.Params)
	if err != nil {
		return sdk.ExecuteResult{}, err
	}
	if c.Mode == ModeQuarantine && !sdk.ValidTaskID(req.TaskID) {
		return sdk.ExecuteResult{}, sdk.InvalidParamsf("mode quarantine names its directory after the task id, which must be 1-128 letters, digits, '-', '_' or '.'; got %s", sdk.Quote(req.TaskID, 64))
	}
	res := p.cleanup(ctx, c, req.TaskID)
	p.log.Info("disk cleanup", "path", c.Path, "mode", c.Mode, "task_id", req.TaskID, "success", res.Success, "files_deleted", res.Metrics["files_deleted"], "files_quarantined", res.Metrics["files_quarantined"])
	return res, nil
}

// run is the state of one cleanup.
type run struct {
	ctx      context.Context
	c        cleanupParams
	root     *os.Root
	dev      uint64
	now      time.Time
	taskID   string
	matched  []string
	problems []string
	metrics  map[string]float64
	skipped  map[string]int
}

func (r *run) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *run) skip(why string) { r.skipped[why]++ }

func (p *Plugin) cleanup(ctx context.Context, c cleanupParams, taskID string) sdk.ExecuteResult {
	fail := func(format string, args ...any) sdk.ExecuteResult {
		return sdk.ExecuteResult{Output: fmt.Sprintf("disk.cleanup %s: ", sdk.Quote(c.Path, 256)) + fmt.Sprintf(format, args...)}
	}
	root, fi, err := openDir(c.Path)
	if err != nil {
		return fail("%v", err)
	}
	defer root.Close()
	r := &run{
		ctx: ctx, c: c, root: root, dev: devOf(fi), now: p.now(), taskID: taskID,
		metrics: map[string]float64{"files_deleted": 0, "files_quarantined": 0, "bytes_freed": 0},
		skipped: map[string]int{},
	}
	// Purge first, so that this task's own quarantine is never purged.
	r.purgeQuarantine()
	r.dir(".", 0)
	if err := ctx.Err(); err != nil {
		r.problem("stopped early: %v", context.Cause(ctx))
	}
	return r.result()
}

// openDir opens dir as an os.Root after checking that it is a directory
// and not a symlink, and that what was opened is what was checked.
func openDir(dir string) (*os.Root, fs.FileInfo, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, nil, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, nil, errors.New("is a symbolic link; give the real directory (symlinks are never followed)")
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("is not a directory (%s)", fi.Mode().Type())
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	opened, err := root.Stat(".")
	if err != nil || !os.SameFile(fi, opened) {
		root.Close()
		return nil, nil, errors.New("changed while it was being opened; not touching it")
	}
	return root, fi, nil
}

func devOf(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev)
	}
	return 0
}

// dir cleans one directory, rel to the root.
func (r *run) dir(rel string, depth int) {
	f, err := r.root.Open(rel)
	if err != nil {
		r.problem("open %s: %v", sdk.Quote(rel, 200), unwrapPath(err))
		return
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		r.problem("read %s: %v", sdk.Quote(rel, 200), unwrapPath(err))
	}
	for _, e := range entries {
		if r.ctx.Err() != nil {
			return
		}
		name := e.Name()
		if rel == "." && name == QuarantineDir {
			continue
		}
		relName := path.Join(rel, name)
		fi, err := r.root.Lstat(relName)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				r.problem("lstat %s: %v", sdk.Quote(relName, 200), unwrapPath(err))
			}
			continue
		}
		switch mode := fi.Mode(); {
		case mode&fs.ModeSymlink != 0:
			r.skip("symlinks")
		case mode.IsDir():
			switch {
			case !r.c.Recursive:
			case devOf(fi) != r.dev:
				r.skip("directories on another file system")
			case depth+1 >= maxDepth:
				r.skip(fmt.Sprintf("directories deeper than %d", maxDepth))
			default:
				r.dir(relName, depth+1)
			}
		case mode.IsRegular():
			r.file(relName, name, fi)
		default:
			r.skip("special files")
		}
	}
}

// file deletes or quarantines one regular file if it matches.
func (r *run) file(relName, name string, fi fs.FileInfo) {
	if ok, _ := filepath.Match(r.c.Pattern, name); !ok {
		return
	}
	if r.now.Sub(fi.ModTime()) < r.c.OlderThan {
		r.skip("matching files younger than olderThan")
		return
	}
	size := float64(fi.Size())
	if r.c.Mode == ModeDelete {
		// Remove unlinks the name: if it was swapped for a symlink since
		// the Lstat, the link goes, never its target.
		if err := r.root.Remove(relName); err != nil {
			r.problem("delete %s: %v", sdk.Quote(relName, 200), unwrapPath(err))
			return
		}
		r.metrics["files_deleted"]++
		r.metrics["bytes_freed"] += size
	} else {
		if err := r.quarantine(relName); err != nil {
			r.problem("quarantine %s: %v", sdk.Quote(relName, 200), unwrapPath(err))
			return
		}
		r.metrics["files_quarantined"]++
		r.metrics["bytes_quarantined"] += size
	}
	r.matched = append(r.matched, relName)
}

// quarantine moves relName to QuarantineDir/<task>/relName.
func (r *run) quarantine(relName string) error {
	if err := r.ensureQuarantineDir(); err != nil {
		return err
	}
	dst := path.Join(QuarantineDir, r.taskID, relName)
	if err := r.root.MkdirAll(path.Dir(dst), 0o700); err != nil {
		return err
	}
	// Never replace a file already quarantined under the same name.
	for i := 1; ; i++ {
		if _, err := r.root.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		} else if i > 100 {
			return fmt.Errorf("too many quarantined files named %s", sdk.Quote(dst, 200))
		}
		dst = path.Join(QuarantineDir, r.taskID, fmt.Sprintf("%s~%d", relName, i))
	}
	return r.root.Rename(relName, dst)
}

// ensureQuarantineDir makes QuarantineDir a real directory (mode 0700) or
// fails if something else has its name.
func (r *run) ensureQuarantineDir() error {
	err := r.root.Mkdir(QuarantineDir, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := r.root.Lstat(QuarantineDir)
	if err != nil {
		return err
	}
	if !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s exists and is not a directory (%s); not using it", QuarantineDir, fi.Mode().Type())
	}
	return nil
}

// purgeQuarantine removes the task directories in QuarantineDir last
// modified more than quarantineTTL ago. It works in an os.Root of its own
// on QuarantineDir, after checking that it is a real directory.
func (r *run) purgeQuarantine() {
	fi, err := r.root.Lstat(QuarantineDir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		r.problem("quarantine: %v", unwrapPath(err))
		return
	}
	if !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
		r.problem("%s is not a directory (%s); not purging it", QuarantineDir, fi.Mode().Type())
		return
	}
	q, err := r.root.OpenRoot(QuarantineDir)
	if err != nil {
		r.problem("quarantine: %v", unwrapPath(err))
		return
	}
	defer q.Close()
	if opened, err := q.Stat("."); err != nil || !os.SameFile(fi, opened) {
		r.problem("%s changed while it was being opened; not purging it", QuarantineDir)
		return
	}
	f, err := q.Open(".")
	if err != nil {
		r.problem("quarantine: %v", unwrapPath(err))
		return
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		r.problem("quarantine: %v", unwrapPath(err))
	}
	for _, e := range entries {
		fi, err := q.Lstat(e.Name())
		if err != nil || !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
			continue
		}
		if r.now.Sub(fi.ModTime()) < r.c.QuarantineTTL {
			continue
		}
		size := treeSize(q, e.Name(), 0)
		if err := q.RemoveAll(e.Name()); err != nil {
			r.problem("purge quarantine %s: %v", sdk.Quote(e.Name(), 200), unwrapPath(err))
			continue
		}
		r.metrics["quarantine_purged"]++
		r.metrics["bytes_freed"] += float64(size)
	}
}

// treeSize adds up the sizes of the regular files below rel, without
// following symlinks.
func treeSize(root *os.Root, rel string, depth int) int64 {
	f, err := root.Open(rel)
	if err != nil {
		return 0
	}
	entries, _ := f.ReadDir(-1)
	f.Close()
	var n int64
	for _, e := range entries {
		fi, err := root.Lstat(path.Join(rel, e.Name()))
		switch {
		case err != nil:
		case fi.Mode().IsRegular():
			n += fi.Size()
		case fi.IsDir() && depth < maxDepth:
			n += treeSize(root, path.Join(rel, e.Name()), depth+1)
		}
	}
	return n
}

// unwrapPath drops the *PathError wrapper, whose path is relative to the
// root and already named in the message.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return fmt.Errorf("%s: %w", le.Op, le.Err)
	}
	return err
}

func (r *run) result() sdk.ExecuteResult {
	var b strings.Builder
	verb, n := "deleted", r.metrics["files_deleted"]
	if r.c.Mode == ModeQuarantine {
		verb, n = "quarantined", r.metrics["files_quarantined"]
	}
	fmt.Fprintf(&b, "%s %d file(s) in %s matching %s", verb, int(n), sdk.Quote(r.c.Path, 256), sdk.Quote(r.c.Pattern, 100))
	if r.c.OlderThan > 0 {
		fmt.Fprintf(&b, " older than %s", r.c.OlderThan)
	}
	if r.c.Recursive {
		b.WriteString(" (recursive)")
	}
	fmt.Fprintf(&b, "; %s freed", bytesString(r.metrics["bytes_freed"]))
	if r.c.Mode == ModeQuarantine {
		fmt.Fprintf(&b, "; moved to %s", sdk.Quote(path.Join(r.c.Path, QuarantineDir, r.taskID), 300))
	}
	if n := r.metrics["quarantine_purged"]; n > 0 {
		fmt.Fprintf(&b, "; purged %d quarantine dir(s) older than %s", int(n), r.c.QuarantineTTL)
	}
	if len(r.skipped) > 0 {
		var parts []string
		for why, n := range r.skipped {
			parts = append(parts, fmt.Sprintf("%d %s", n, why))
		}
		slices.Sort(parts)
		fmt.Fprintf(&b, "; left alone: %s", strings.Join(parts, ", "))
	}
	if len(r.problems) > 0 {
		fmt.Fprintf(&b, "\n%d problem(s):", len(r.problems))
		for i, p := range r.problems {
			if i == maxProblems {
				fmt.Fprintf(&b, "\n  … and %d more", len(r.problems)-maxProblems)
				break
			}
			b.WriteString("\n  " + p)
		}
	}
	if len(r.matched) > 0 {
		fmt.Fprintf(&b, "\n%s:", verb)
		for i, name := range r.matched {
			if i == maxListed {
				fmt.Fprintf(&b, " … and %d more", len(r.matched)-maxListed)
				break
			}
			b.WriteString(" " + sdk.Quote(name, 200))
		}
	}
	r.metrics["problems"] = float64(len(r.problems))
	return sdk.ExecuteResult{Success: len(r.problems) == 0, Output: b.String(), Metrics: r.metrics}
}

func bytesString(n float64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", int64(n))
	}
	div, exp := float64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", n/div, "KMGTP"[exp])
}

package experiment

import (
	"context"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// fileOutcome is what became of the bytes of a deleted checkpoint.
type fileOutcome string

// File outcomes, the values of the counter's outcome attribute.
const (
	// fileRemoved: a regular file under the artifact root, removed.
	fileRemoved fileOutcome = "removed"
	// fileMissing: nothing at the path (not an error).
	fileMissing fileOutcome = "missing"
	// fileOutsideRoot: a file:// path outside the artifact root, lexically
	// or once symlinks and ".." are resolved; left alone.
	fileOutsideRoot fileOutcome = "outside_root"
	// fileOtherURI: not a local file:// URI (s3://, gs://, a remote host,
	// unparsable); left to its store.
	fileOtherURI fileOutcome = "other_uri"
	// fileNotRegular: a directory, a symlink or a special file; left alone.
	fileNotRegular fileOutcome = "not_regular"
	// fileFailed: the removal failed (permissions, I/O); logged.
	fileFailed fileOutcome = "failed"
	// fileStillReferenced: a remaining checkpoint names the file (a run
	// that overwrites best.pt, a copy in another experiment); left alone.
	fileStillReferenced fileOutcome = "still_referenced"
)

var fileOutcomes = []fileOutcome{fileRemoved, fileMissing, fileOutsideRoot, fileOtherURI, fileNotRegular, fileFailed, fileStillReferenced}

// checkpointInstruments are the checkpoint metrics. Prometheus names:
//
//	quantmesh_experiment_checkpoint_files_total{outcome}   bytes of deleted checkpoints, by what became of them
//	quantmesh_experiment_checkpoints_deleted_total          checkpoint records deleted by retention
type checkpointInstruments struct {
	files   metric.Int64Counter
	deleted metric.Int64Counter
}

func newCheckpointInstruments(meter metric.Meter) (*checkpointInstruments, error) {
	if meter == nil {
		meter = noop.NewMeterProvider().Meter("")
	}
	var (
		ins checkpointInstruments
		err error
	)
	if ins.files, err = meter.Int64Counter("quantmesh.experiment.checkpoint.files",
		metric.WithDescription("Files of checkpoints deleted by retention, by outcome: removed, missing, outside_root and other_uri (left alone), not_regular (left alone), failed, still_referenced (left alone).")); err != nil {
		return nil, err
	}
	if ins.deleted, err = meter.Int64Counter("quantmesh.experiment.checkpoints.deleted",
		metric.WithDescription("Checkpoint records deleted by retention.")); err != nil {
		return nil, err
	}
	ctx := context.Background()
	for _, o := range fileOutcomes {
		ins.files.Add(ctx, 0, metric.WithAttributes(attribute.String("outcome", string(o))))
	}
	ins.deleted.Add(ctx, 0)
	return &ins, nil
}

// localFilePath returns the path of a local file:// URI (file:///abs,
// file://localhost/abs, or file://./rel relative to the working
// directory), made absolute but not cleaned: ".." is resolved later,
// after symlinks, as the operating system would. ok is false for other
// URIs.
func localFilePath(uri string) (path string, ok bool) {
	if len(uri) < len("file:") || !strings.EqualFold(uri[:len("file:")], "file:") {
		return "", false
	}
	u, err := url.Parse(uri)
	if err != nil {
		return "", false
	}
	switch {
	case u.Opaque != "":
		path = u.Opaque // file:rel/path
	case u.Host == "" || u.Host == "localhost":
		path = u.Path
	case u.Host == "." || u.Host == "..":
		path = u.Host + u.Path // file://./rel/path
	default:
		return "", false // a remote host
	}
	if path == "" || strings.ContainsRune(path, 0) {
		return "", false
	}
	if !filepath.IsAbs(path) {
		wd, err := os.Getwd()
		if err != nil {
			return "", false
		}
		path = wd + string(filepath.Separator) + path
	}
	return path, true
}

// fileEntry returns the directory entry a local file:// URI names, with
// the symlinks and ".." of its directory resolved (the entry remove acts
// on), and, when the entry leads elsewhere (a symlink), where it leads. ok
// is false for other URIs.
func fileEntry(uri string) (entry, target string, ok bool) {
	p, ok := localFilePath(uri)
	if !ok {
		return "", "", false
	}
	dir, base := filepath.Split(p)
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	entry = filepath.Join(dir, base)
	target = entry
	if real, err := filepath.EvalSymlinks(p); err == nil {
		target = real
	}
	return entry, target, true
}

// within returns p relative to base when p lies under base (or is base).
func within(base, p string) (string, bool) {
	rel, err := filepath.Rel(base, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", false
	}
	return rel, true
}

// artifactFiles removes the files of deleted checkpoints, and only those
// under the artifact root. Open it per retention run (the root may appear
// after start-up) and Close it after.
type artifactFiles struct {
	// abs is the root as configured, absolute and clean; empty when the
	// root is not a local file:// URI (then no file is ever removed).
	abs string
	// real is abs with symlinks resolved; empty when it does not exist.
	real string
	// root confines every removal to real, even if a directory is
	// swapped for a symlink between the checks and the removal.
	root *os.Root
}

func openArtifactFiles(rootURI string) *artifactFiles {
	a := &artifactFiles{}
	p, ok := localFilePath(rootURI)
	if !ok {
		return a
	}
	a.abs = filepath.Clean(p)
	real, err := filepath.EvalSymlinks(a.abs)
	if err != nil {
		return a
	}
	r, err := os.OpenRoot(real)
	if err != nil {
		return a
	}
	a.real, a.root = real, r
	return a
}

func (a *artifactFiles) Close() {
	if a.root != nil {
		a.root.Close()
	}
}

// remove removes the file uri names when it is a regular file under the
// root. The error is set only with fileFailed.
func (a *artifactFiles) remove(uri string) (fileOutcome, error) {
	p, ok := localFilePath(uri)
	if !ok {
		return fileOtherURI, nil
	}
	// Lexically first: a path outside the root is reported as such, even
	// when nothing is there.
	clean := filepath.Clean(p)
	if a.abs == "" {
		return fileOutsideRoot, nil
	}
	rel, in := within(a.abs, clean)
	if !in && a.real != "" {
		rel, in = within(a.real, clean)
	}
	if !in {
		return fileOutsideRoot, nil
	}
	if rel == "." {
		return fileNotRegular, nil // the root itself
	}
	if a.root == nil {
		return fileMissing, nil // the root does not exist
	}
	// Then as the system resolves it: the parent directory with symlinks
	// and ".." resolved must lie under the real root.
	i := strings.LastIndexByte(p, filepath.Separator)
	parent, base := p[:i], p[i+1:]
	if parent == "" {
		parent = string(filepath.Separator)
	}
	if base == "" || base == "." || base == ".." {
		return fileNotRegular, nil // names a directory
	}
	realParent, err := filepath.EvalSymlinks(parent)
	if err != nil {
		if isMissing(err) {
			return fileMissing, nil
		}
		return fileFailed, err
	}
	relParent, in := within(a.real, realParent)
	if !in {
		return fileOutsideRoot, nil
	}
	rel = filepath.Join(relParent, base)
	fi, err := a.root.Lstat(rel)
	if err != nil {
		if isMissing(err) {
			return fileMissing, nil
		}
		return fileFailed, err
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		// Never followed, never removed: report where it leads.
		target, err := filepath.EvalSymlinks(filepath.Join(a.real, rel))
		if err == nil {
			if _, in := within(a.real, target); !in {
				return fileOutsideRoot, nil
			}
		}
		return fileNotRegular, nil
	case !fi.Mode().IsRegular():
		return fileNotRegular, nil
	}
	if err := a.root.Remove(rel); err != nil {
		if isMissing(err) {
			return fileMissing, nil
		}
		return fileFailed, err
	}
	return fileRemoved, nil
}

func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

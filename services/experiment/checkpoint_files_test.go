package experiment

import (
	"os"
	"path/filepath"
	"testing"
)

// TestArtifactFilesRemove covers what happens to the bytes of a deleted
// checkpoint: only regular files under the artifact root are removed, and
// no symlink or ".." leads a removal outside it.
func TestArtifactFilesRemove(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "artifacts")
	outside := filepath.Join(base, "elsewhere")
	for _, d := range []string{filepath.Join(root, "exp", "run"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string) string {
		t.Helper()
		if err := os.WriteFile(p, []byte("weights"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	symlink := func(target, link string) string {
		t.Helper()
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		return link
	}
	inside := write(filepath.Join(root, "exp", "run", "ckpt-1.pt"))
	secret := write(filepath.Join(outside, "secret.pt"))
	write(filepath.Join(root, "exp", "run", "ckpt-2.pt"))
	// A symlink inside the root to a file outside it, and a symlinked
	// directory inside the root that escapes it.
	escapingLink := symlink(secret, filepath.Join(root, "exp", "link.pt"))
	symlink(outside, filepath.Join(root, "exp", "out"))
	// A symlink inside the root to a file inside it.
	innerTarget := write(filepath.Join(root, "exp", "target.pt"))
	innerLink := symlink(innerTarget, filepath.Join(root, "exp", "inner-link.pt"))
	// The root reached through a symlink of its own.
	rootAlias := symlink(root, filepath.Join(base, "root-alias"))
	aliasFile := write(filepath.Join(root, "exp", "via-alias.pt"))
	// A relative path (file://./...) resolved against the working
	// directory.
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	relRoot, err := filepath.Rel(wd, root)
	if err != nil {
		t.Fatal(err)
	}
	relFile := write(filepath.Join(root, "exp", "relative.pt"))

	files := openArtifactFiles("file://" + root)
	defer files.Close()
	tests := []struct {
		name string
		uri  string
		want fileOutcome
		// gone must not exist afterwards; kept must.
		gone, kept string
	}{
		{"a file under the root", "file://" + inside, fileRemoved, inside, ""},
		{"file://localhost form", "file://localhost" + filepath.Join(root, "exp", "run", "ckpt-2.pt"), fileRemoved, filepath.Join(root, "exp", "run", "ckpt-2.pt"), ""},
		{"removed twice: missing is not an error", "file://" + inside, fileMissing, "", ""},
		{"a missing directory", "file://" + filepath.Join(root, "nope", "x.pt"), fileMissing, "", ""},
		{"a file outside the root", "file://" + secret, fileOutsideRoot, "", secret},
		{"a missing file outside the root", "file:///nonexistent/x.pt", fileOutsideRoot, "", ""},
		{"dot-dot out of the root", "file://" + root + "/exp/../../elsewhere/secret.pt", fileOutsideRoot, "", secret},
		{"a symlink escaping the root is not followed", "file://" + escapingLink, fileOutsideRoot, "", secret},
		{"a symlinked directory escaping the root is not followed", "file://" + filepath.Join(root, "exp", "out", "secret.pt"), fileOutsideRoot, "", secret},
		{"dot-dot after an escaping symlink resolves outside", "file://" + filepath.Join(root, "exp") + "/out/../elsewhere/secret.pt", fileOutsideRoot, "", secret},
		{"a symlink inside the root is left alone", "file://" + innerLink, fileNotRegular, "", innerTarget},
		{"a directory is left alone", "file://" + filepath.Join(root, "exp", "run"), fileNotRegular, "", filepath.Join(root, "exp", "run")},
		{"the root itself is left alone", "file://" + root, fileNotRegular, "", root},
		{"a trailing slash names a directory", "file://" + root + "/exp/", fileNotRegular, "", filepath.Join(root, "exp")},
		{"a path through a symlink to the root is outside it", "file://" + filepath.Join(rootAlias, "exp", "via-alias.pt"), fileOutsideRoot, "", aliasFile},
		{"a relative file URI", "file://./" + filepath.ToSlash(filepath.Join(relRoot, "exp", "relative.pt")), fileRemoved, relFile, ""},
		{"an s3 URI", "s3://bucket/exp/ckpt.pt", fileOtherURI, "", ""},
		{"a remote host", "file://fileserver/share/ckpt.pt", fileOtherURI, "", ""},
		{"a plain path is not a URI", inside, fileOtherURI, "", ""},
	}
	// In order: some cases depend on earlier removals.
	for _, tt := range tests {
		got, err := files.remove(tt.uri)
		if got != tt.want || err != nil {
			t.Errorf("%s: remove(%q) = %s, %v; want %s", tt.name, tt.uri, got, err, tt.want)
		}
		if tt.gone != "" {
			if _, err := os.Lstat(tt.gone); !os.IsNotExist(err) {
				t.Errorf("%s: %s still exists (%v)", tt.name, tt.gone, err)
			}
		}
		if tt.kept != "" {
			if _, err := os.Lstat(tt.kept); err != nil {
				t.Errorf("%s: %s was removed: %v", tt.name, tt.kept, err)
			}
		}
	}
	for _, p := range []string{secret, escapingLink, innerLink, innerTarget} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}

	// A root configured through a symlink: paths through the symlink and
	// through the real directory are both under it.
	viaAlias := openArtifactFiles("file://" + rootAlias)
	defer viaAlias.Close()
	realFile := write(filepath.Join(root, "exp", "real.pt"))
	for _, uri := range []string{"file://" + filepath.Join(rootAlias, "exp", "via-alias.pt"), "file://" + realFile} {
		if got, err := viaAlias.remove(uri); got != fileRemoved || err != nil {
			t.Errorf("root through a symlink: remove(%q) = %s, %v; want removed", uri, got, err)
		}
	}
	// A relative root (the embedded default is file://./data/artifacts)
	// resolves against the working directory.
	relative := openArtifactFiles("file://./" + filepath.ToSlash(relRoot))
	defer relative.Close()
	relTarget := write(filepath.Join(root, "exp", "under-relative-root.pt"))
	if got, err := relative.remove("file://" + relTarget); got != fileRemoved || err != nil {
		t.Errorf("relative root: remove = %s, %v; want removed", got, err)
	}
	if got, err := relative.remove("file://" + secret); got != fileOutsideRoot || err != nil {
		t.Errorf("relative root, a file outside: remove = %s, %v; want outside_root", got, err)
	}
	for _, p := range []string{aliasFile, realFile, relTarget} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists (%v)", p, err)
		}
	}
}

func TestArtifactFilesRootNotLocal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := filepath.Join(dir, "ckpt.pt")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{"s3://bucket/artifacts", "file://" + filepath.Join(dir, "missing-root")} {
		files := openArtifactFiles(root)
		want := fileOutsideRoot
		if root != "s3://bucket/artifacts" {
			// Under a root that does not exist, nothing exists.
			want = fileMissing
			f2 := filepath.Join(dir, "missing-root", "x.pt")
			if got, err := files.remove("file://" + f2); got != want || err != nil {
				t.Errorf("root %s: remove = %s, %v; want %s", root, got, err, want)
			}
			want = fileOutsideRoot
		}
		if got, err := files.remove("file://" + f); got != want || err != nil {
			t.Errorf("root %s: remove = %s, %v; want %s", root, got, err, want)
		}
		files.Close()
	}
	if _, err := os.Stat(f); err != nil {
		t.Errorf("file removed under a root it is not in: %v", err)
	}
}

// Package executorimage holds the kernel side shared by both provisioners:
// the kernel launcher (launch.py) and the Debian package list
// (packages.txt). Dockerfile.executor copies this directory to /opt/executor;
// the local provisioner extracts the embedded copy into its state directory
// with WriteTo. Either way a kernel starts as
//
//	python3 <dir>/launch.py -f <connection file>
//
// and behaves the same: inline matplotlib with a CJK font, history off, the
// data stack preloaded. launch.py documents the environment it reads
// (EXECUTOR_PRELOAD, EXECUTOR_WORKDIR, EXECUTOR_MPL_CACHE).
package executorimage

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FS holds the kernel-side files, at the root of the file system.
//
//go:embed launch.py zygote.py packages.txt
var FS embed.FS

// Launcher is the name of the kernel launcher in FS and in a directory
// written by WriteTo.
const Launcher = "launch.py"

// Zygote is the name of the fork server in FS and in a directory written by
// WriteTo: one interpreter that loads the kernel's modules once and forks a
// kernel per request (KERNEL_START=fork: run by the local provisioner, and by
// the docker provisioner in a zygote container of this image).
const Zygote = "zygote.py"

// WriteTo writes the files of FS into dir, creating it if needed. Files that
// already hold the right content are left alone, so calling it at every start
// is cheap and does not disturb kernels running from dir. Changed files are
// replaced atomically (write to a temporary file, then rename).
func WriteTo(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("executorimage: %w", err)
	}
	return fs.WalkDir(FS, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if d.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return fmt.Errorf("executorimage: %w", err)
			}
			return nil
		}
		want, err := FS.ReadFile(name)
		if err != nil {
			return fmt.Errorf("executorimage: %w", err)
		}
		if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
			return os.Chmod(dst, 0o644)
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-"+filepath.Base(dst)+"-")
		if err != nil {
			return fmt.Errorf("executorimage: %w", err)
		}
		_, werr := tmp.Write(want)
		cerr := tmp.Close()
		if werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Chmod(tmp.Name(), 0o644)
		}
		if werr == nil {
			werr = os.Rename(tmp.Name(), dst)
		}
		if werr != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("executorimage: write %s: %w", name, werr)
		}
		return nil
	})
}

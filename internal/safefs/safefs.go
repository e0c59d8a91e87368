// Package safefs opens files in directories a kernel can write to without
// following a symlink it planted or blocking on a FIFO: an os.Root for the
// directory, Lstat, then an open that must find the very file Lstat saw.
package safefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// OpenDir opens dir as an os.Root, refusing a dir that is itself a
// symlink (checked with Lstat and confirmed on the opened directory).
func OpenDir(dir string) (*os.Root, error) {
	li, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	if !li.IsDir() {
		return nil, fmt.Errorf("not a directory (mode %s)", li.Mode())
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	ri, err := root.Stat(".")
	if err != nil || !os.SameFile(li, ri) {
		root.Close()
		return nil, fmt.Errorf("directory changed while being opened")
	}
	return root, nil
}

// ErrNotRegular is returned by OpenRegular and OpenRegularIn for a symlink, a directory, a
// special file, or a file swapped while being opened.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens name in dir for reading only if it is a regular file,
// reached through no symlink (see OpenRegularIn); dir itself must not be a
// symlink either.
func OpenRegular(dir, name string) (*os.File, fs.FileInfo, error) {
	root, err := OpenDir(dir)
	if err != nil {
		return nil, nil, err
	}
	defer root.Close()
	return OpenRegularIn(root, name)
}

// OpenRegularIn opens name in root for reading only if it is a regular file
// and not a symlink. Lstat rules out symlinks and special files; the opened
// file must then be the very file Lstat saw, which defeats a swap between
// the two calls. O_NONBLOCK keeps a FIFO swapped in from blocking the open;
// O_NOFOLLOW refuses a symlink swapped in.
func OpenRegularIn(root *os.Root, name string) (*os.File, fs.FileInfo, error) {
	li, err := root.Lstat(name)
	if err != nil {
		return nil, nil, err
	}
	if !li.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: %w", name, ErrNotRegular)
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !os.SameFile(li, fi) {
		f.Close()
		return nil, nil, fmt.Errorf("%s changed while being opened: %w", name, ErrNotRegular)
	}
	return f, fi, nil
}

package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"
)

// The account files: root, so root-owned files show a name, and the
// nonroot user the image runs as. No login shell exists in the image.
var (
	passwdFile = "root:x:0:0:root:/root:/sbin/nologin\n" +
		UserName + ":x:" + strconv.Itoa(UID) + ":" + strconv.Itoa(GID) + ":" + UserName + ":/nonexistent:/sbin/nologin\n"
	groupFile = "root:x:0:\n" + UserName + ":x:" + strconv.Itoa(GID) + ":\n"
)

// layerEntry is one file or directory of the layer.
type layerEntry struct {
	name string // relative, e.g. "etc/passwd"; directories end in "/"
	mode int64
	data []byte // for small files
	path string // for files copied from disk (binaries)
}

// writeLayer writes the image's one layer, a gzipped tar of bins and the
// account files, to w. Entries are sorted by name, owned by root, with
// fixed modes and the time mtime; gzip's header carries no name and no
// time. The same inputs give the same bytes.
func writeLayer(w io.Writer, bins []Binary, mtime time.Time) error {
	entries := []layerEntry{
		{name: "etc/", mode: 0o755},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwdFile)},
		{name: "etc/group", mode: 0o644, data: []byte(groupFile)},
	}
	for _, b := range bins {
		entries = append(entries, layerEntry{name: b.Name, mode: 0o755, path: b.Path})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	bw := bufio.NewWriterSize(w, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.DefaultCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		if err := writeEntry(tw, e, mtime); err != nil {
			return fmt.Errorf("layer entry %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func writeEntry(tw *tar.Writer, e layerEntry, mtime time.Time) error {
	hdr := &tar.Header{
		Name:    e.name,
		Mode:    e.mode,
		ModTime: mtime,
		Uname:   "root",
		Gname:   "root",
	}
	if e.name[len(e.name)-1] == '/' {
		hdr.Typeflag = tar.TypeDir
		return tw.WriteHeader(hdr)
	}
	hdr.Typeflag = tar.TypeReg
	if e.path == "" {
		hdr.Size = int64(len(e.data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(e.data)
		return err
	}
	f, err := os.Open(e.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	hdr.Size = fi.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

package main

// Where a downloaded artifact lands on disk.
//
// An artifact's file name comes from ComfyUI through the gateway, so it is
// data, not a path: it may hold directories, ".." or be absolute, and every
// job's first image is called image_00001_.png. Saving into a folder
// therefore reduces the name to a safe base name, prefixes it with the job
// id's first eight characters, and never replaces an existing file: a taken
// name gets -2, -3, ... before its extension (opened with O_EXCL, which fails
// instead of overwriting, so racing writers keep their own file).

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const maxNameChars = 200
const maxNumbered = 10000

// safeName is the last component of name with nothing that could leave a
// folder; "artifact" when nothing is left.
func safeName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`<>:"|?*`, r) {
			return '_'
		}
		return r
	}, name)
	name = strings.TrimLeft(strings.TrimSpace(name), ".")
	if len(name) > maxNameChars {
		ext := filepath.Ext(name)
		if len(ext) >= maxNameChars {
			ext = ""
		}
		name = name[:maxNameChars-len(ext)] + ext
	}
	if name == "" {
		return "artifact"
	}
	return name
}

// jobFileName is JOBID8-name: the job id's first eight characters and the safe name.
func jobFileName(jobID, filename string) string {
	prefix := safeName(jobID)
	if len(prefix) > 8 {
		prefix = prefix[:8]
	}
	return prefix + "-" + safeName(filename)
}

// numbered is name for 1, else stem-N.ext.
func numbered(name string, number int) string {
	if number == 1 {
		return name
	}
	ext := filepath.Ext(name)
	if ext == name {
		ext = ""
	}
	return fmt.Sprintf("%s-%d%s", strings.TrimSuffix(name, ext), number, ext)
}

// saveNew writes data into dir as a new file for the job's artifact and
// returns its path; it never overwrites and never writes outside dir.
func saveNew(dir, jobID, filename string, data []byte) (string, error) {
	name := jobFileName(jobID, filename)
	for number := 1; number <= maxNumbered; number++ {
		path := filepath.Join(dir, numbered(name, number))
		file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if _, err := file.Write(data); err != nil {
			file.Close()
			os.Remove(path)
			return "", err
		}
		return path, file.Close()
	}
	return "", fmt.Errorf("%s and %d numbered variants exist", filepath.Join(dir, name), maxNumbered-1)
}

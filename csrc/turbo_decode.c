/* JPEG decoding through the system libjpeg-turbo (its SIMD inverse DCT, colour
 * conversion and M/8 DCT scaling), called from src/vision/turbo.rs.
 *
 * libjpeg reports fatal errors by calling error_exit, which must not return; the only
 * portable way out is longjmp, and that has to happen in C, never across Rust frames.
 * This file keeps every setjmp/longjmp on its side and hands Rust a status code. */

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

enum {
    GRAFT_JPEG_OK = 0,
    GRAFT_JPEG_ERROR = 1,     /* corrupt or unsupported; `message` says why */
    GRAFT_JPEG_TRUNCATED = 2, /* the data ends before the image does */
    GRAFT_JPEG_SIZE = 3,      /* `out` is too small; `width`/`height` hold the size needed */
    GRAFT_JPEG_SCANS = 4,     /* more scans than `max_scans` */
};

struct graft_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int status;
    char *message;
    size_t message_len;
};

static void graft_fail_with(j_common_ptr cinfo, int status, const char *text) {
    struct graft_error *err = (struct graft_error *)cinfo->err;
    if (err->message_len > 0) {
        snprintf(err->message, err->message_len, "%s", text);
    }
    err->status = status;
    longjmp(err->jump, 1);
}

static void graft_fail(j_common_ptr cinfo, int status) {
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    graft_fail_with(cinfo, status, text);
}

static void graft_error_exit(j_common_ptr cinfo) { graft_fail(cinfo, GRAFT_JPEG_ERROR); }

/* libjpeg treats running out of data as a warning and fills the rest of the image
 * with grey; for a service that would be a wrong answer, so it ends the decode. Other
 * warnings (stray bytes between markers and the like) are what every viewer ignores. */
static void graft_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        graft_fail(cinfo, GRAFT_JPEG_TRUNCATED);
    }
}

/* A progressive JPEG can hold thousands of scans of next to no data, each a pass over
 * every block of the image: the decode work is then out of all proportion to the file.
 * As djpeg's -maxscans and TurboJPEG's scan limit do, the progress monitor, which libjpeg
 * calls between units of input work, ends the decode once the scan being read is past
 * the limit. */
struct graft_progress {
    struct jpeg_progress_mgr pub;
    unsigned int max_scans;
};

static void graft_progress_monitor(j_common_ptr cinfo) {
    struct graft_progress *progress = (struct graft_progress *)cinfo->progress;
    if (!cinfo->is_decompressor) {
        return;
    }
    int scan = ((j_decompress_ptr)cinfo)->input_scan_number;
    if (scan > 0 && (unsigned int)scan > progress->max_scans) {
        char text[JMSG_LENGTH_MAX];
        snprintf(text, sizeof text, "the JPEG has more than %u scans", progress->max_scans);
        graft_fail_with(cinfo, GRAFT_JPEG_SCANS, text);
    }
}

/* Decodes `data` to 8-bit RGB at scale_num/8 of its stored size (scale_num in 1..8),
 * rows top to bottom without EXIF orientation, into `out` (`capacity` bytes), reading at
 * most `max_scans` scans. */
int graft_jpeg_decode_rgb(const unsigned char *data, size_t len, unsigned int scale_num, unsigned int max_scans,
                          unsigned char *out, size_t capacity, unsigned int *width, unsigned int *height,
                          char *message, size_t message_len) {
    struct jpeg_decompress_struct cinfo;
    struct graft_error err;
    struct graft_progress progress;
    memset(&cinfo, 0, sizeof cinfo);
    memset(&progress, 0, sizeof progress);
    progress.pub.progress_monitor = graft_progress_monitor;
    progress.max_scans = max_scans;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = graft_error_exit;
    err.pub.emit_message = graft_emit_message;
    err.status = GRAFT_JPEG_OK;
    err.message = message;
    err.message_len = message_len;
    if (message_len > 0) {
        message[0] = '\0';
    }
    *width = 0;
    *height = 0;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return err.status;
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &progress.pub;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        /* Adobe's inverted CMYK needs the caller's colour handling. */
        snprintf(message, message_len, "CMYK/YCCK JPEG");
        jpeg_destroy_decompress(&cinfo);
        return GRAFT_JPEG_ERROR;
    }
    cinfo.out_color_space = JCS_EXT_RGB;
    cinfo.scale_num = scale_num;
    cinfo.scale_denom = 8;
    cinfo.dct_method = JDCT_ISLOW;
    jpeg_calc_output_dimensions(&cinfo);
    *width = cinfo.output_width;
    *height = cinfo.output_height;
    size_t row_bytes = (size_t)cinfo.output_width * 3;
    if (cinfo.output_components != 3 || row_bytes * cinfo.output_height > capacity) {
        jpeg_destroy_decompress(&cinfo);
        return GRAFT_JPEG_SIZE;
    }
    jpeg_start_decompress(&cinfo);
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rows[4];
        unsigned int count = 0;
        while (count < 4 && cinfo.output_scanline + count < cinfo.output_height) {
            rows[count] = out + (size_t)(cinfo.output_scanline + count) * row_bytes;
            count++;
        }
        jpeg_read_scanlines(&cinfo, rows, count);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return GRAFT_JPEG_OK;
}

#include <string.h>
#include <rbd/librbd.h>
#include <dlfcn.h>
#include <pthread.h>

/* librbd and librados are opened on first use (sd_rbd_load), not linked:
   loading them and libceph-common, boost, ibverbs … at every start cost
   ~10 ms of each snapdump run (half its start-up), for the few that talk
   to Ceph. Each entry point's type is taken from librbd.h (__typeof__), so
   the calls keep the checked signatures. */
#define SD_RBD_FUNCTIONS(X) \
    X(rados_buffer_free) \
    X(rados_conf_read_file) \
    X(rados_conf_set) \
    X(rados_connect) \
    X(rados_create2) \
    X(rados_ioctx_create) \
    X(rados_ioctx_destroy) \
    X(rados_ioctx_pool_stat) \
    X(rados_mon_command) \
    X(rados_shutdown) \
    X(rbd_close) \
    X(rbd_create) \
    X(rbd_diff_iterate2) \
    X(rbd_flush) \
    X(rbd_get_group) \
    X(rbd_get_size) \
    X(rbd_group_create) \
    X(rbd_group_image_add) \
    X(rbd_group_image_list) \
    X(rbd_group_image_list_cleanup) \
    X(rbd_group_image_remove) \
    X(rbd_group_info_cleanup) \
    X(rbd_group_list) \
    X(rbd_group_remove) \
    X(rbd_group_snap_create2) \
    X(rbd_group_snap_list) \
    X(rbd_group_snap_list_cleanup) \
    X(rbd_group_snap_remove) \
    X(rbd_image_spec_list_cleanup) \
    X(rbd_list2) \
    X(rbd_open) \
    X(rbd_open_read_only) \
    X(rbd_read) \
    X(rbd_remove) \
    X(rbd_snap_create) \
    X(rbd_snap_create2) \
    X(rbd_snap_get_group_namespace) \
    X(rbd_snap_get_namespace_type) \
    X(rbd_snap_get_timestamp) \
    X(rbd_snap_group_namespace_cleanup) \
    X(rbd_snap_list) \
    X(rbd_snap_list_end) \
    X(rbd_snap_remove) \
    X(rbd_snap_set) \
    X(rbd_snap_set_by_id) \
    X(rbd_write) \

#define SD_RBD_FIELD(name) __typeof__(&name) name;
struct sd_rbd_api { SD_RBD_FUNCTIONS(SD_RBD_FIELD) };
#undef SD_RBD_FIELD

static inline struct sd_rbd_api *sd_rbd_api_storage(void) {
    static struct sd_rbd_api api;
    return &api;
}

static inline const char **sd_rbd_error_storage(void) {
    static const char *error;
    return &error;
}

static inline void sd_rbd_open_libraries(void) {
    struct sd_rbd_api *api = sd_rbd_api_storage();
    void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_GLOBAL);
    void *rbd = rados ? dlopen("librbd.so.1", RTLD_NOW | RTLD_GLOBAL) : NULL;
    if (!rados || !rbd) {
        *sd_rbd_error_storage() = dlerror();
        return;
    }
#define SD_RBD_RESOLVE(name) \
    api->name = (__typeof__(&name))dlsym(strncmp(#name, "rados_", 6) == 0 ? rados : rbd, #name); \
    if (!api->name) { *sd_rbd_error_storage() = "librbd/librados lack " #name; return; }
    SD_RBD_FUNCTIONS(SD_RBD_RESOLVE)
#undef SD_RBD_RESOLVE
}

/* The entry points, once per process; NULL with the reason in *error when
   the libraries cannot be opened (librbd1 not installed). */
static inline const struct sd_rbd_api *sd_rbd_load(const char **error) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sd_rbd_open_libraries);
    *error = *sd_rbd_error_storage();
    return *error ? NULL : sd_rbd_api_storage();
}

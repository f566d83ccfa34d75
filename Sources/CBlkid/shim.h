// libblkid for partition and filesystem lookup. Only FerrySystem imports this module.
// The flag macros are re-exported as constants so Swift sees one spelling whatever it imports.
#ifndef C_BLKID_SHIM_H
#define C_BLKID_SHIM_H
#include <blkid/blkid.h>
static const int CBlkid_SUBLKS_LABEL_UUID_TYPE = BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID | BLKID_SUBLKS_TYPE;
static const int CBlkid_PARTS_ENTRY_DETAILS = BLKID_PARTS_ENTRY_DETAILS;
#endif

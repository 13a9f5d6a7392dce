"""After the stain: delivery of DICOM results to PACS destinations (DICOMweb STOW-RS) and
signed completion webhooks, each a durable record worked through by a dispatcher thread."""

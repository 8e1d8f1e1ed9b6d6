"""A minimal Leica LIF writer for tests (no library writes LIF): one or more series of (T, C, Y, X) uint16.

Layout (as liffile reads it, version 2): a header block ``<IIBI`` (0x70, 2*n+5, 0x2A, n) + the UTF-16 XML,
then per series a memory block ``<IIBQBI`` (0x70, 0, 0x2A, size, 0x2A, n) + UTF-16 id + the pixels; channels
are stored as planes (channel BytesInc = plane bytes), so T's BytesInc is plane bytes * channels.
"""

import struct


def _series_xml(name, t, c, h, w, pixel_m, block, channel_names):
    plane = 2 * h * w
    chans = "".join(
        f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="16" NameOfMeasuredQuantity="" Min="0" '
        f'Max="65535" Unit="" LUTName="{channel_names[k]}" IsLUTInverted="0" BytesInc="{k * plane}" '
        f'BitInc="0"/>' for k in range(c))
    dims = (f'<DimensionDescription DimID="1" NumberOfElements="{w}" Origin="0" Length="{pixel_m * (w - 1)}" '
            f'Unit="m" BytesInc="2" BitInc="0"/>'
            f'<DimensionDescription DimID="2" NumberOfElements="{h}" Origin="0" Length="{pixel_m * (h - 1)}" '
            f'Unit="m" BytesInc="{2 * w}" BitInc="0"/>'
            f'<DimensionDescription DimID="4" NumberOfElements="{t}" Origin="0" Length="{t}" Unit="s" '
            f'BytesInc="{plane * c}" BitInc="0"/>')
    return (f'<Element Name="{name}" Visibility="1" CopyOption="1" UniqueID="{block}-uid"><Data><Image>'
            f'<ImageDescription><Channels>{chans}</Channels><Dimensions>{dims}</Dimensions></ImageDescription>'
            f'</Image></Data><Memory Size="{plane * c * t}" MemoryBlockID="{block}"/><Children/></Element>')


def write_lif(path, series, pixel_m=108e-9, channel_names=("Red", "Green", "Blue", "Gray")):
    """``series``: list of ``(name, uint16 array (T, C, Y, X))``."""
    children = "".join(_series_xml(name, *a.shape, pixel_m, f"MemBlock_{i + 1}", channel_names)
                       for i, (name, a) in enumerate(series))
    xml = ('<LMSDataContainerHeader Version="2"><Element Name="root" Visibility="1" CopyOption="1" '
           'UniqueID="root-uid"><Data><Experiment/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/>'
           f'<Children>{children}</Children></Element></LMSDataContainerHeader>')
    with open(path, "wb") as fh:
        x = xml.encode("utf-16-le")
        fh.write(struct.pack("<IIBI", 0x70, len(x) + 5, 0x2A, len(xml)))
        fh.write(x)
        blocks = [("MemBlock_0", b"")] + [(f"MemBlock_{i + 1}", a.astype("<u2").tobytes())
                                          for i, (_, a) in enumerate(series)]
        for bid, data in blocks:
            fh.write(struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(data), 0x2A, len(bid)))
            fh.write(bid.encode("utf-16-le"))
            fh.write(data)

// TensorRT IPluginV3 for the `fused_attn_offset_prediction` node (namespace "rtq", version "1").
//
// One int8 query [B, Q, K] (or two, x_q0 / x_q1, when the projections quantize it differently)
// -> two float32 outputs [B, Q, N0] and [B, Q, N1]; the math is reference.py's, the work is
// kernel.cu's. Attributes arrive as PluginFields named as in the ONNX node: weight_i (INT8,
// N_i * K), weight_scale_i (FLOAT32, N_i), input_scale_i (FLOAT32), input_zero_point_i (INT32
// or INT64), bias_i (FLOAT32, N_i).
//
// Device weights: the plugin keeps the attribute values on the host and uploads them once
// (cudaMalloc + cudaMemcpy) into buffers every clone shares (read-only, freed with the last clone).
// clone() uploads before copying, because TensorRT wants a clone "in a fully initialized state"
// (NvInferPluginBase.h, IPluginV3::clone); attachToContext returns such a clone. onShapeChange runs
// inside enqueueV3, so it only checks shapes and never allocates; enqueue only launches the kernel
// on the given stream. The combined rescale input_scale_i * weight_scale_i[n] is formed in float32
// on the host, as in reference.py.
//
// Two-input form: x_q0 and x_q1 must have the same shape (checked at configure time where the
// dimensions are known, and again on every shape change); both outputs take x_q0's leading dims.
//
// The library exports getCreators / setLoggerFinder, the entry points of
// IPluginRegistry::loadLibrary (trt.get_plugin_registry().load_library in Python) and of
// trtexec --dynamicPlugins.
#include "kernel.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace rtq
{
namespace
{

constexpr char const* kPluginName = "fused_attn_offset_prediction";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "rtq";

ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& message) noexcept
{
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    std::string const text = std::string(kPluginNamespace) + "::" + kPluginName + ": " + message;
    if (logger != nullptr)
    {
        logger->log(ILogger::Severity::kERROR, text.c_str());
    }
}

// Host copy of one projection's attributes, and its device copy once uploaded.
struct ProjectionWeights
{
    std::vector<int8_t> weight;       // [N, K]
    std::vector<float> weightScale;   // [N]
    std::vector<float> bias;          // [N]
    std::vector<float> combinedScale; // [N], float32(input_scale * weight_scale[n])
    float inputScale{0.F};
    int32_t inputZeroPoint{0};

    int32_t outFeatures() const
    {
        return static_cast<int32_t>(weightScale.size());
    }
};

// One projection's device copy; owned by a DeviceWeights shared by a plugin and its clones.
struct DeviceProjection
{
    int8_t* weight{nullptr};
    float* scale{nullptr};
    float* bias{nullptr};
};

struct DeviceWeights
{
    DeviceProjection proj[2];

    DeviceWeights() = default;
    DeviceWeights(DeviceWeights const&) = delete;
    DeviceWeights& operator=(DeviceWeights const&) = delete;

    ~DeviceWeights()
    {
        for (DeviceProjection& p : proj)
        {
            cudaFree(p.weight);
            cudaFree(p.scale);
            cudaFree(p.bias);
        }
    }
};

//! True when two dims can be the same tensor shape (-1: not known yet, as in configurePlugin).
bool sameShape(Dims const& a, Dims const& b, bool allowWildcards)
{
    if (a.nbDims != b.nbDims)
    {
        return false;
    }
    for (int32_t d = 0; d < a.nbDims; ++d)
    {
        bool const unknown = allowWildcards && (a.d[d] == -1 || b.d[d] == -1);
        if (!unknown && a.d[d] != b.d[d])
        {
            return false;
        }
    }
    return true;
}

template <typename T>
std::vector<T> copyField(PluginField const& field, PluginFieldType expected)
{
    if (field.type != expected)
    {
        throw std::invalid_argument(std::string("attribute ") + field.name + " has an unexpected type");
    }
    auto const* data = static_cast<T const*>(field.data);
    return std::vector<T>(data, data + field.length);
}

//! One scalar attribute stored as `Narrow` or `Wide` (the ONNX parser may hand either), as `Out`.
template <typename Out, typename Narrow, typename Wide>
Out readScalar(PluginField const& field, PluginFieldType narrow, PluginFieldType wide, char const* expected)
{
    if (field.length != 1)
    {
        throw std::invalid_argument(std::string("attribute ") + field.name + " must be one value");
    }
    if (field.type == narrow)
    {
        return static_cast<Out>(*static_cast<Narrow const*>(field.data));
    }
    if (field.type == wide)
    {
        return static_cast<Out>(*static_cast<Wide const*>(field.data));
    }
    throw std::invalid_argument(std::string("attribute ") + field.name + " must be " + expected);
}

float readFloat(PluginField const& field)
{
    return readScalar<float, float, double>(field, PluginFieldType::kFLOAT32, PluginFieldType::kFLOAT64, "FLOAT32");
}

std::vector<float> readFloats(PluginField const& field)
{
    if (field.type == PluginFieldType::kFLOAT64)
    {
        auto const* data = static_cast<double const*>(field.data);
        return std::vector<float>(data, data + field.length);
    }
    return copyField<float>(field, PluginFieldType::kFLOAT32);
}

int32_t readInt(PluginField const& field)
{
    return readScalar<int32_t, int32_t, int64_t>(
        field, PluginFieldType::kINT32, PluginFieldType::kINT64, "INT32 or INT64");
}

class FusedAttnOffsetPredictionPlugin : public IPluginV3,
                                        public IPluginV3OneCore,
                                        public IPluginV3OneBuild,
                                        public IPluginV3OneRuntime
{
public:
    explicit FusedAttnOffsetPredictionPlugin(PluginFieldCollection const& fc)
    {
        bool seen[2][5] = {};
        for (int32_t i = 0; i < fc.nbFields; ++i)
        {
            PluginField const& field = fc.fields[i];
            std::string const name = field.name != nullptr ? field.name : "";
            if (name.size() < 3 || name[name.size() - 2] != '_' || (name.back() != '0' && name.back() != '1'))
            {
                continue;  // plugin_version / plugin_namespace and unknown fields are not ours
            }
            int32_t const index = name.back() - '0';
            std::string const base = name.substr(0, name.size() - 2);
            ProjectionWeights& p = mProj[index];
            if (base == "weight")
            {
                p.weight = copyField<int8_t>(field, PluginFieldType::kINT8);
                seen[index][0] = true;
            }
            else if (base == "weight_scale")
            {
                p.weightScale = readFloats(field);
                seen[index][1] = true;
            }
            else if (base == "input_scale")
            {
                p.inputScale = readFloat(field);
                seen[index][2] = true;
            }
            else if (base == "input_zero_point")
            {
                p.inputZeroPoint = readInt(field);
                seen[index][3] = true;
            }
            else if (base == "bias")
            {
                p.bias = readFloats(field);
                seen[index][4] = true;
            }
        }
        char const* names[5] = {"weight", "weight_scale", "input_scale", "input_zero_point", "bias"};
        for (int32_t i = 0; i < 2; ++i)
        {
            for (int32_t a = 0; a < 5; ++a)
            {
                if (!seen[i][a] && a != 3)  // the zero point defaults to 0
                {
                    throw std::invalid_argument(std::string("missing attribute ") + names[a] + "_" + std::to_string(i));
                }
            }
        }
        validate();
    }

    FusedAttnOffsetPredictionPlugin(FusedAttnOffsetPredictionPlugin const& other)
        : mProj{other.mProj[0], other.mProj[1]}
        , mDevice(other.mDevice)
        , mK(other.mK)
        , mNbInputs(other.mNbInputs)
    {
    }

    FusedAttnOffsetPredictionPlugin& operator=(FusedAttnOffsetPredictionPlugin const&) = delete;

    ~FusedAttnOffsetPredictionPlugin() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        try
        {
            if (!uploadWeights())
            {
                return nullptr;
            }
            return new FusedAttnOffsetPredictionPlugin(*this);
        }
        catch (std::exception const& e)
        {
            logError(e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override
    {
        return kPluginName;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return 2;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        if ((nbInputs != 1 && nbInputs != 2) || nbOutputs != 2)
        {
            logError("expects 1 or 2 inputs and 2 outputs");
            return -1;
        }
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            Dims const& dims = in[i].desc.dims;
            if (dims.nbDims < 1 || (dims.d[dims.nbDims - 1] != -1 && dims.d[dims.nbDims - 1] != mK))
            {
                logError("the last input dimension must equal the weight K");
                return -1;
            }
        }
        if (nbInputs == 2 && !sameShape(in[0].desc.dims, in[1].desc.dims, /*allowWildcards=*/true))
        {
            logError("x_q0 and x_q1 must have the same shape");
            return -1;
        }
        (void) out;
        mNbInputs = nbInputs;
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 2 || nbInputs < 1 || inputTypes[0] != DataType::kINT8)
        {
            return -1;
        }
        outputTypes[0] = DataType::kFLOAT;
        outputTypes[1] = DataType::kFLOAT;
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        if ((nbInputs != 1 && nbInputs != 2) || nbOutputs != 2 || inputs[0].nbDims < 1)
        {
            return -1;
        }
        for (int32_t o = 0; o < 2; ++o)
        {
            DimsExprs const& src = inputs[0];  // x_q1, when given, has x_q0's shape (configurePlugin)
            outputs[o].nbDims = src.nbDims;
            for (int32_t d = 0; d + 1 < src.nbDims; ++d)
            {
                outputs[o].d[d] = src.d[d];  // B, Q, ... pass through: any batch and query count
            }
            outputs[o].d[src.nbDims - 1] = exprBuilder.constant(mProj[o].outFeatures());
        }
        return 0;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t /*nbOutputs*/) noexcept override
    {
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        return pos < nbInputs ? desc.type == DataType::kINT8 : desc.type == DataType::kFLOAT;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
        int32_t /*nbOutputs*/) noexcept override
    {
        if (nbInputs < 1 || in[0].dims.nbDims < 1 || in[0].dims.d[in[0].dims.nbDims - 1] != mK)
        {
            logError("the last input dimension must equal the weight K");
            return -1;
        }
        if (nbInputs == 2 && (in[1].type != DataType::kINT8 || !sameShape(in[0].dims, in[1].dims, false)))
        {
            logError("x_q1 must be int8 with the shape of x_q0");
            return -1;
        }
        mNbInputs = nbInputs;
        return uploadWeights() ? 0 : -1;  // a no-op for a clone, which shares the uploaded weights
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        Dims const& dims = inputDesc[0].dims;
        int64_t rows = 1;
        for (int32_t d = 0; d + 1 < dims.nbDims; ++d)
        {
            rows *= dims.d[d];
        }
        if (mDevice == nullptr)
        {
            return -1;
        }
        auto const* x0 = static_cast<int8_t const*>(inputs[0]);
        auto const* x1 = mNbInputs == 2 ? static_cast<int8_t const*>(inputs[1]) : x0;
        DeviceProjection const* d = mDevice->proj;
        cudaError_t const status = launchFusedAttnOffsetPrediction(x0, x1, static_cast<int>(rows), mK,
            d[0].weight, d[0].scale, d[0].bias, mProj[0].outFeatures(), mProj[0].inputZeroPoint,
            d[1].weight, d[1].scale, d[1].bias, mProj[1].outFeatures(), mProj[1].inputZeroPoint,
            static_cast<float*>(outputs[0]), static_cast<float*>(outputs[1]), stream);
        return status == cudaSuccess ? 0 : -1;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();  // a clone carries the uploaded weights
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mFields.clear();
        for (int32_t i = 0; i < 2; ++i)
        {
            ProjectionWeights const& p = mProj[i];
            mFields.emplace_back(mFieldNames[i][0].c_str(), p.weight.data(), PluginFieldType::kINT8,
                static_cast<int32_t>(p.weight.size()));
            mFields.emplace_back(mFieldNames[i][1].c_str(), p.weightScale.data(), PluginFieldType::kFLOAT32,
                static_cast<int32_t>(p.weightScale.size()));
            mFields.emplace_back(mFieldNames[i][2].c_str(), &p.inputScale, PluginFieldType::kFLOAT32, 1);
            mFields.emplace_back(mFieldNames[i][3].c_str(), &p.inputZeroPoint, PluginFieldType::kINT32, 1);
            mFields.emplace_back(
                mFieldNames[i][4].c_str(), p.bias.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(p.bias.size()));
        }
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }

private:
    void validate()
    {
        int32_t k = -1;
        for (ProjectionWeights& p : mProj)
        {
            int32_t const n = p.outFeatures();
            if (n <= 0 || static_cast<int32_t>(p.bias.size()) != n || p.weight.size() % n != 0)
            {
                throw std::invalid_argument("weight_i must hold N_i * K values, with N_i = len(weight_scale_i) = len(bias_i)");
            }
            int32_t const pk = static_cast<int32_t>(p.weight.size() / n);
            if (k != -1 && pk != k)
            {
                throw std::invalid_argument("both projections must have the same K");
            }
            k = pk;
            p.combinedScale.resize(n);
            for (int32_t c = 0; c < n; ++c)
            {
                p.combinedScale[c] = p.inputScale * p.weightScale[c];
            }
        }
        if (k <= 0)
        {
            throw std::invalid_argument("K must be positive");
        }
        mK = k;
    }

    template <typename T>
    static bool upload(T** device, std::vector<T> const& host)
    {
        size_t const bytes = host.size() * sizeof(T);
        return cudaMalloc(reinterpret_cast<void**>(device), bytes) == cudaSuccess
            && cudaMemcpy(*device, host.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess;
    }

    //! Upload the weights once; this object and every later clone share the buffers.
    bool uploadWeights() noexcept
    {
        if (mDevice != nullptr)
        {
            return true;
        }
        try
        {
            auto device = std::make_shared<DeviceWeights>();
            for (int32_t i = 0; i < 2; ++i)
            {
                ProjectionWeights const& p = mProj[i];
                DeviceProjection& d = device->proj[i];
                if (!upload(&d.weight, p.weight) || !upload(&d.scale, p.combinedScale) || !upload(&d.bias, p.bias))
                {
                    logError("could not copy the weights to the GPU");
                    return false;  // `device` frees what was allocated
                }
            }
            mDevice = std::move(device);
            return true;
        }
        catch (std::exception const& e)
        {
            logError(e.what());
        }
        return false;
    }

    ProjectionWeights mProj[2];
    std::shared_ptr<DeviceWeights const> mDevice;
    int32_t mK{0};
    int32_t mNbInputs{1};
    std::vector<PluginField> mFields;
    PluginFieldCollection mFieldCollection{};
    std::string const mFieldNames[2][5] = {
        {"weight_0", "weight_scale_0", "input_scale_0", "input_zero_point_0", "bias_0"},
        {"weight_1", "weight_scale_1", "input_scale_1", "input_zero_point_1", "bias_1"},
    };
};

class FusedAttnOffsetPredictionCreator : public IPluginCreatorV3One
{
public:
    FusedAttnOffsetPredictionCreator()
    {
        for (int32_t i = 0; i < 2; ++i)
        {
            std::string const s = std::to_string(i);
            mNames.push_back("weight_" + s);
            mNames.push_back("weight_scale_" + s);
            mNames.push_back("input_scale_" + s);
            mNames.push_back("input_zero_point_" + s);
            mNames.push_back("bias_" + s);
        }
        PluginFieldType const types[5] = {PluginFieldType::kINT8, PluginFieldType::kFLOAT32,
            PluginFieldType::kFLOAT32, PluginFieldType::kINT32, PluginFieldType::kFLOAT32};
        for (size_t i = 0; i < mNames.size(); ++i)
        {
            mFields.emplace_back(mNames[i].c_str(), nullptr, types[i % 5], 0);
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept override
    {
        if (fc == nullptr)
        {
            logError("no attributes given");
            return nullptr;
        }
        try
        {
            return new FusedAttnOffsetPredictionPlugin(*fc);
        }
        catch (std::exception const& e)
        {
            logError(e.what());
        }
        return nullptr;
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }
    AsciiChar const* getPluginName() const noexcept override
    {
        return kPluginName;
    }
    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }
    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

private:
    std::vector<std::string> mNames;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

} // namespace
} // namespace rtq

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    rtq::gLoggerFinder = finder;
}

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static rtq::FusedAttnOffsetPredictionCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
